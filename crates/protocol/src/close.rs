//! WebSocket close codes and the client's reconnect rule (docs/PROTOCOL.md 4.3, 8.4).

use std::fmt;

/// A WebSocket close code with SocketCluster's meaning attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CloseCode(pub u16);

impl CloseCode {
    /// Socket closed normally.
    pub const NORMAL: CloseCode = CloseCode(1000);
    /// Going away.
    pub const GOING_AWAY: CloseCode = CloseCode(1001);
    /// A close frame without a status code.
    pub const NO_STATUS: CloseCode = CloseCode(1005);
    /// The connection dropped without a close frame (or a connect error).
    pub const ABNORMAL: CloseCode = CloseCode(1006);
    /// A message exceeded the maximum payload.
    pub const MESSAGE_TOO_BIG: CloseCode = CloseCode(1009);
    /// Client: no ping received within `pingTimeout`.
    pub const PING_TIMEOUT: CloseCode = CloseCode(4000);
    /// Server: no pong within `pingTimeout`.
    pub const PONG_TIMEOUT: CloseCode = CloseCode(4001);
    /// Server failed to sign an auth token.
    pub const AUTH_SIGN_FAILED: CloseCode = CloseCode(4002);
    /// Client: the `#handshake` invoke failed without a status code.
    pub const HANDSHAKE_FAILED: CloseCode = CloseCode(4003);
    /// Server: no `#handshake` before `handshakeTimeout`.
    pub const HANDSHAKE_TIMEOUT: CloseCode = CloseCode(4005);
    /// Client: the WebSocket did not open within `connectTimeout`.
    pub const CONNECT_TIMEOUT: CloseCode = CloseCode(4007);
    /// Server rejected the handshake (middleware, or `#handshake`/`#authenticate` without cid).
    pub const HANDSHAKE_REJECTED: CloseCode = CloseCode(4008);
    /// Server received a message before the `#handshake`.
    pub const MESSAGE_BEFORE_HANDSHAKE: CloseCode = CloseCode(4009);

    /// The table text the JS peers report when a close has no reason (4.3).
    pub fn table_text(self) -> Option<&'static str> {
        Some(match self.0 {
            1000 => "Socket closed normally",
            1001 => "Socket was disconnected",
            1002 => "A WebSocket protocol error was encountered",
            1003 => "Server terminated socket because it received invalid data",
            1005 => "Socket closed without status code",
            1006 => "Socket hung up",
            1007 => "Message format was incorrect",
            1008 => "Encountered a policy violation",
            1009 => "Message was too big to process",
            1010 => {
                "Client ended the connection because the server did not comply with extension requirements"
            }
            1011 => "Server encountered an unexpected fatal condition",
            4000 => "Server ping timed out",
            4001 => "Client pong timed out",
            4002 => "Server failed to sign auth token",
            4003 => "Failed to complete handshake",
            4004 => "Client failed to save auth token",
            4005 => "Did not receive #handshake from client before timeout",
            4006 => "Failed to bind socket to message broker",
            4007 => "Client connection establishment timed out",
            4008 => "Server rejected handshake from client",
            4009 => "Server received a message before the client handshake",
            _ => return None,
        })
    }

    /// 1000 and 1001 are "ignored statuses": closing with them emits no error event.
    pub fn is_ignored_status(self) -> bool {
        matches!(self.0, 1000 | 1001)
    }

    /// The reason to report locally: the close frame's reason, or when that is empty
    /// the table text for the code, or empty (8.1).
    pub fn reported_reason(self, reason: &str) -> String {
        if reason.is_empty() {
            self.table_text().unwrap_or("").to_owned()
        } else {
            reason.to_owned()
        }
    }

    /// The `SocketProtocolError` message for a close with this code (4.1): the table
    /// text, or `Socket connection closed with status code <code>[ and reason: <reason>]`.
    pub fn socket_protocol_error_message(self, reason: Option<&str>) -> String {
        match self.table_text() {
            Some(t) => t.to_owned(),
            None => match reason {
                Some(r) => format!(
                    "Socket connection closed with status code {} and reason: {r}",
                    self.0
                ),
                None => format!("Socket connection closed with status code {}", self.0),
            },
        }
    }

    /// Whether and how the JS client reconnects after this close (4.3): never for 1000
    /// and for codes >= 4500; immediately (on the first attempt) for 4000, 4001 and
    /// 1005; with backoff otherwise. The rule applies whoever closed.
    pub fn reconnect(self) -> ReconnectAfterClose {
        match self.0 {
            1000 => ReconnectAfterClose::Never,
            c if c >= 4500 => ReconnectAfterClose::Never,
            4000 | 4001 | 1005 => ReconnectAfterClose::Immediately,
            _ => ReconnectAfterClose::WithBackoff,
        }
    }

    /// Whether the code may be sent in a close frame (RFC 6455 7.4): 1000-1003,
    /// 1007-1014 and 3000-4999.
    pub fn is_sendable(self) -> bool {
        matches!(self.0, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }
}

impl From<u16> for CloseCode {
    fn from(c: u16) -> Self {
        CloseCode(c)
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// What an auto-reconnecting client does after a close.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReconnectAfterClose {
    /// Never reconnect (1000 and >= 4500).
    Never,
    /// Reconnect with delay 0 if this is the first attempt since the last successful
    /// handshake (exponent 0), else with backoff.
    Immediately,
    /// Reconnect after the backoff delay.
    WithBackoff,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_policy_follows_protocol_4_3() {
        use ReconnectAfterClose::*;
        assert_eq!(CloseCode(1000).reconnect(), Never);
        assert_eq!(CloseCode(4500).reconnect(), Never);
        assert_eq!(CloseCode(4999).reconnect(), Never);
        assert_eq!(CloseCode(4000).reconnect(), Immediately);
        assert_eq!(CloseCode(4001).reconnect(), Immediately);
        assert_eq!(CloseCode(1005).reconnect(), Immediately);
        for c in [
            1001, 1006, 1009, 3000, 4002, 4003, 4005, 4007, 4008, 4009, 4100, 4499,
        ] {
            assert_eq!(CloseCode(c).reconnect(), WithBackoff, "{c}");
        }
    }

    #[test]
    fn reasons_fall_back_to_the_table() {
        assert_eq!(CloseCode(4000).reported_reason(""), "Server ping timed out");
        assert_eq!(CloseCode(4321).reported_reason("custom bye"), "custom bye");
        assert_eq!(CloseCode(4100).reported_reason(""), "");
        assert_eq!(
            CloseCode(4100).socket_protocol_error_message(Some("")),
            "Socket connection closed with status code 4100 and reason: "
        );
    }

    #[test]
    fn reserved_codes_are_not_sendable() {
        assert!(!CloseCode(1005).is_sendable());
        assert!(!CloseCode(1006).is_sendable());
        assert!(CloseCode(4501).is_sendable());
    }
}
