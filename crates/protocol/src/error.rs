//! SocketCluster errors on the wire (docs/PROTOCOL.md 3.5, 4.1, 4.2).

use std::fmt;

use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// The error names of `sc-errors` (docs/PROTOCOL.md 4.1), plus any other name a peer sends.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorName {
    /// The token's `exp` has passed.
    AuthTokenExpiredError,
    /// Malformed JWT, bad signature, wrong algorithm or missing token.
    AuthTokenInvalidError,
    /// The token's `nbf` lies in the future.
    AuthTokenNotBeforeError,
    /// Any other verification error (e.g. the token is not a string).
    AuthTokenError,
    /// Server-local: a token could not be delivered to the client.
    AuthError,
    /// Middleware blocked without an error (or with a `silent` one).
    SilentMiddlewareBlockedError,
    /// Protocol misuse (malformatted reserved events, disabled features, ...).
    InvalidActionError,
    /// Bad API arguments.
    InvalidArgumentsError,
    /// Bad constructor options.
    InvalidOptionsError,
    /// An undecodable message.
    InvalidMessageError,
    /// A socket closed with a code other than 1000/1001.
    SocketProtocolError,
    /// A server-level problem (invalid origin, ...).
    ServerProtocolError,
    /// Unused by v20.
    HTTPServerError,
    /// Unused by v20.
    ResourceLimitError,
    /// An invoke got no response within its ack timeout.
    TimeoutError,
    /// A pending call was aborted because the connection closed or failed.
    BadConnectionError,
    /// The broker failed to subscribe or unsubscribe a socket.
    BrokerError,
    /// Unused by v20.
    ProcessExitError,
    /// Unused by v20.
    UnknownError,
    /// The generic name of an error that carried none.
    Error,
    /// Any other (application-defined) name.
    Other(String),
}

impl ErrorName {
    /// The wire spelling.
    pub fn as_str(&self) -> &str {
        match self {
            ErrorName::AuthTokenExpiredError => "AuthTokenExpiredError",
            ErrorName::AuthTokenInvalidError => "AuthTokenInvalidError",
            ErrorName::AuthTokenNotBeforeError => "AuthTokenNotBeforeError",
            ErrorName::AuthTokenError => "AuthTokenError",
            ErrorName::AuthError => "AuthError",
            ErrorName::SilentMiddlewareBlockedError => "SilentMiddlewareBlockedError",
            ErrorName::InvalidActionError => "InvalidActionError",
            ErrorName::InvalidArgumentsError => "InvalidArgumentsError",
            ErrorName::InvalidOptionsError => "InvalidOptionsError",
            ErrorName::InvalidMessageError => "InvalidMessageError",
            ErrorName::SocketProtocolError => "SocketProtocolError",
            ErrorName::ServerProtocolError => "ServerProtocolError",
            ErrorName::HTTPServerError => "HTTPServerError",
            ErrorName::ResourceLimitError => "ResourceLimitError",
            ErrorName::TimeoutError => "TimeoutError",
            ErrorName::BadConnectionError => "BadConnectionError",
            ErrorName::BrokerError => "BrokerError",
            ErrorName::ProcessExitError => "ProcessExitError",
            ErrorName::UnknownError => "UnknownError",
            ErrorName::Error => "Error",
            ErrorName::Other(s) => s,
        }
    }

    /// Whether this is one of the token verification errors.
    pub fn is_auth_token_error(&self) -> bool {
        matches!(
            self,
            ErrorName::AuthTokenExpiredError
                | ErrorName::AuthTokenInvalidError
                | ErrorName::AuthTokenNotBeforeError
                | ErrorName::AuthTokenError
        )
    }
}

impl From<&str> for ErrorName {
    fn from(s: &str) -> Self {
        match s {
            "AuthTokenExpiredError" => ErrorName::AuthTokenExpiredError,
            "AuthTokenInvalidError" => ErrorName::AuthTokenInvalidError,
            "AuthTokenNotBeforeError" => ErrorName::AuthTokenNotBeforeError,
            "AuthTokenError" => ErrorName::AuthTokenError,
            "AuthError" => ErrorName::AuthError,
            "SilentMiddlewareBlockedError" => ErrorName::SilentMiddlewareBlockedError,
            "InvalidActionError" => ErrorName::InvalidActionError,
            "InvalidArgumentsError" => ErrorName::InvalidArgumentsError,
            "InvalidOptionsError" => ErrorName::InvalidOptionsError,
            "InvalidMessageError" => ErrorName::InvalidMessageError,
            "SocketProtocolError" => ErrorName::SocketProtocolError,
            "ServerProtocolError" => ErrorName::ServerProtocolError,
            "HTTPServerError" => ErrorName::HTTPServerError,
            "ResourceLimitError" => ErrorName::ResourceLimitError,
            "TimeoutError" => ErrorName::TimeoutError,
            "BadConnectionError" => ErrorName::BadConnectionError,
            "BrokerError" => ErrorName::BrokerError,
            "ProcessExitError" => ErrorName::ProcessExitError,
            "UnknownError" => ErrorName::UnknownError,
            "Error" => ErrorName::Error,
            other => ErrorName::Other(other.to_owned()),
        }
    }
}

impl fmt::Display for ErrorName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A hydrated error object: what a JS receiver makes of `{"message":..,"name":..,...}`.
///
/// Encoding ("dehydration") writes `message`, then `name`, then the extra fields in
/// insertion order, which is the order of `sc-errors` (docs/PROTOCOL.md 3.5).
#[derive(Clone, Debug, PartialEq)]
pub struct ErrorObject {
    /// `name` (the generic `Error` when the peer sent none or a non-string).
    pub name: ErrorName,
    /// Whether `name` was present on the wire (a plain JS `Error` has no own `name`).
    pub name_on_wire: bool,
    /// `message` (`Invalid error message format` when the peer sent a non-string).
    pub message: String,
    /// Every other field (`isBadToken`, `statusCode`, `expiry`, user fields...).
    pub extra: Map<String, Value>,
}

impl ErrorObject {
    /// A new error with a name and a message and no extra field.
    pub fn new(name: impl Into<String>, message: impl Into<String>) -> Self {
        let name: String = name.into();
        ErrorObject {
            name: ErrorName::from(name.as_str()),
            name_on_wire: true,
            message: message.into(),
            extra: Map::new(),
        }
    }

    /// Add an extra field (builder style).
    pub fn with(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.extra.insert(key.into(), value.into());
        self
    }

    /// An extra field.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.extra.get(key)
    }

    /// `isBadToken` of an auth error, when present and boolean.
    pub fn is_bad_token(&self) -> Option<bool> {
        self.extra.get("isBadToken").and_then(Value::as_bool)
    }

    /// `statusCode` of a handshake-middleware error, when numeric.
    pub fn status_code(&self) -> Option<u16> {
        self.extra
            .get("statusCode")
            .and_then(Value::as_u64)
            .and_then(|c| u16::try_from(c).ok())
    }

    /// Hydrate from a JSON object (docs/PROTOCOL.md 3.5).
    pub fn from_map(mut map: Map<String, Value>) -> Self {
        let message = match map.shift_remove("message") {
            Some(Value::String(s)) => s,
            _ => "Invalid error message format".to_owned(),
        };
        let (name, name_on_wire) = match map.shift_remove("name") {
            Some(Value::String(s)) => (ErrorName::from(s.as_str()), true),
            _ => (ErrorName::Error, false),
        };
        ErrorObject {
            name,
            name_on_wire,
            message,
            extra: map,
        }
    }

    /// Dehydrate into a JSON object: `message`, `name`, extras.
    pub fn to_map(&self) -> Map<String, Value> {
        let mut m = Map::with_capacity(self.extra.len() + 2);
        m.insert("message".into(), Value::String(self.message.clone()));
        if self.name_on_wire {
            m.insert("name".into(), Value::String(self.name.as_str().to_owned()));
        }
        for (k, v) in &self.extra {
            if k != "message" && k != "name" {
                m.insert(k.clone(), v.clone());
            }
        }
        m
    }

    /// Dehydrate into a JSON value.
    pub fn to_value(&self) -> Value {
        Value::Object(self.to_map())
    }
}

impl fmt::Display for ErrorObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.name, self.message)
    }
}

impl std::error::Error for ErrorObject {}

/// An error as carried in a response's `error` field: usually an object, but any truthy
/// JSON value is allowed (a string error is delivered as that string, docs/PROTOCOL.md 3.4).
#[derive(Clone, Debug, PartialEq)]
pub enum WireError {
    /// An error object.
    Object(ErrorObject),
    /// Any other value (string, number, array, `true`).
    Value(Value),
}

impl WireError {
    /// Shortcut for an object error with a name and message.
    pub fn new(name: impl Into<String>, message: impl Into<String>) -> Self {
        WireError::Object(ErrorObject::new(name, message))
    }

    /// Hydrate from a JSON value.
    pub fn hydrate(value: Value) -> Self {
        match value {
            Value::Object(m) => WireError::Object(ErrorObject::from_map(m)),
            other => WireError::Value(other),
        }
    }

    /// Hydrate from raw JSON text (invalid text becomes a string value).
    pub fn hydrate_raw(raw: &RawValue) -> Self {
        match serde_json::from_str::<Value>(raw.get()) {
            Ok(v) => WireError::hydrate(v),
            Err(_) => WireError::Value(Value::String(raw.get().to_owned())),
        }
    }

    /// Dehydrate to a JSON value.
    pub fn to_value(&self) -> Value {
        match self {
            WireError::Object(o) => o.to_value(),
            WireError::Value(v) => v.clone(),
        }
    }

    /// Dehydrate to raw JSON text.
    pub fn to_raw(&self) -> Box<RawValue> {
        let text = serde_json::to_string(&self.to_value()).unwrap_or_else(|_| "null".into());
        RawValue::from_string(text).unwrap_or_else(|_| null_raw())
    }

    /// The name (`Error` for a non-object error).
    pub fn name(&self) -> &str {
        match self {
            WireError::Object(o) => o.name.as_str(),
            WireError::Value(_) => "Error",
        }
    }

    /// The message (the value's text for a non-object error).
    pub fn message(&self) -> String {
        match self {
            WireError::Object(o) => o.message.clone(),
            WireError::Value(Value::String(s)) => s.clone(),
            WireError::Value(v) => v.to_string(),
        }
    }

    /// The object, when it is one.
    pub fn as_object(&self) -> Option<&ErrorObject> {
        match self {
            WireError::Object(o) => Some(o),
            WireError::Value(_) => None,
        }
    }
}

impl From<ErrorObject> for WireError {
    fn from(o: ErrorObject) -> Self {
        WireError::Object(o)
    }
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::Object(o) => o.fmt(f),
            WireError::Value(v) => write!(f, "Error: {v}"),
        }
    }
}

impl std::error::Error for WireError {}

fn null_raw() -> Box<RawValue> {
    RawValue::from_string("null".to_owned()).expect("null is valid JSON")
}

/// Constructors for the exact errors the JS server puts on the wire (docs/PROTOCOL.md 4.2).
pub mod wire {
    use super::ErrorObject;

    /// `Subscribe channel name was malformatted`.
    pub fn subscribe_malformatted() -> ErrorObject {
        ErrorObject::new(
            "InvalidActionError",
            "Subscribe channel name was malformatted",
        )
    }
    /// `Unsubscribe channel name was malformatted`.
    pub fn unsubscribe_malformatted() -> ErrorObject {
        ErrorObject::new(
            "InvalidActionError",
            "Unsubscribe channel name was malformatted",
        )
    }
    /// `Publish channel name was malformatted`.
    pub fn publish_malformatted() -> ErrorObject {
        ErrorObject::new(
            "InvalidActionError",
            "Publish channel name was malformatted",
        )
    }
    /// `Client publish feature is disabled`.
    pub fn client_publish_disabled() -> ErrorObject {
        ErrorObject::new("InvalidActionError", "Client publish feature is disabled")
    }
    /// The channel-limit `BrokerError`.
    pub fn channel_limit(channel: &str, socket_id: &str, limit: usize) -> ErrorObject {
        ErrorObject::new(
            "BrokerError",
            format!(
                "Failed to subscribe socket to the {channel} channel - InvalidActionError: Socket {socket_id} tried to exceed the channel subscription limit of {limit}"
            ),
        )
    }
    /// The not-subscribed `BrokerError` of an invoked `#unsubscribe`.
    pub fn not_subscribed(channel: &str, socket_id: &str) -> ErrorObject {
        ErrorObject::new(
            "BrokerError",
            format!(
                "Failed to unsubscribe socket from the {channel} channel - InvalidActionError: Socket {socket_id} tried to unsubscribe from a channel which it is not subscribed to"
            ),
        )
    }
    /// `SilentMiddlewareBlockedError` for an action type and middleware type.
    pub fn silent_block(action: &str, middleware: &str) -> ErrorObject {
        ErrorObject::new(
            "SilentMiddlewareBlockedError",
            format!("The {action} AGAction was blocked by {middleware} middleware"),
        )
        .with("type", middleware)
    }
    /// A client's reply to a `#setAuthToken` invoke without data.
    pub fn no_token_data() -> ErrorObject {
        ErrorObject::new(
            "InvalidMessageError",
            "No token data provided by #setAuthToken event",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dehydrates_message_name_then_extras() {
        let e = ErrorObject::new("CustomFailError", "Something failed").with("extra", 42);
        assert_eq!(
            serde_json::to_string(&e.to_value()).unwrap(),
            r#"{"message":"Something failed","name":"CustomFailError","extra":42}"#
        );
    }

    #[test]
    fn hydrates_like_sc_errors() {
        let e = WireError::hydrate(serde_json::json!({"message": "plain error"}));
        let o = e.as_object().unwrap();
        assert_eq!(o.name, ErrorName::Error);
        assert!(!o.name_on_wire);
        // round trip keeps the missing name missing
        assert_eq!(
            serde_json::to_string(&e.to_value()).unwrap(),
            r#"{"message":"plain error"}"#
        );
        let e = WireError::hydrate(serde_json::json!({"message": 5, "name": 7}));
        assert_eq!(e.message(), "Invalid error message format");
        assert_eq!(e.name(), "Error");
        let s = WireError::hydrate(serde_json::json!("just a string"));
        assert_eq!(s.message(), "just a string");
    }

    #[test]
    fn known_names_round_trip() {
        for n in [
            "TimeoutError",
            "BadConnectionError",
            "BrokerError",
            "AuthTokenExpiredError",
        ] {
            let name = ErrorName::from(n);
            assert!(!matches!(name, ErrorName::Other(_)));
            assert_eq!(name.as_str(), n);
        }
        assert_eq!(
            ErrorName::from("FailedLoginError").as_str(),
            "FailedLoginError"
        );
    }

    #[test]
    fn wire_strings_are_exact() {
        assert_eq!(
            serde_json::to_string(&wire::silent_block("invoke", "inbound").to_value()).unwrap(),
            r#"{"message":"The invoke AGAction was blocked by inbound middleware","name":"SilentMiddlewareBlockedError","type":"inbound"}"#
        );
    }
}
