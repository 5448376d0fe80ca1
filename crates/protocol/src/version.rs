//! Protocol versions 1 and 2 and their heartbeat strings (docs/PROTOCOL.md 1.4).

use std::fmt;
use std::str::FromStr;

/// The SocketCluster protocol version. It is never negotiated: both ends are configured
/// with the same value (docs/PROTOCOL.md 1.4).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ProtocolVersion {
    /// Version 1, spoken by SocketCluster <= 14 ("compatibility mode"): ping `#1`, pong `#2`.
    V1,
    /// Version 2 (default since v15): ping and pong are both an empty text frame.
    #[default]
    V2,
}

/// Which end of the connection is decoding. It decides which heartbeat string is
/// expected inbound (the client expects pings, the server pongs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// The client end: inbound heartbeats are pings.
    Client,
    /// The server end: inbound heartbeats are pongs.
    Server,
}

impl ProtocolVersion {
    /// The text frame the server sends as a ping.
    pub const fn ping(self) -> &'static str {
        match self {
            ProtocolVersion::V1 => "#1",
            ProtocolVersion::V2 => "",
        }
    }

    /// The text frame the client answers a ping with.
    pub const fn pong(self) -> &'static str {
        match self {
            ProtocolVersion::V1 => "#2",
            ProtocolVersion::V2 => "",
        }
    }

    /// The heartbeat string that `role` receives.
    pub const fn inbound_heartbeat(self, role: Role) -> &'static str {
        match role {
            Role::Client => self.ping(),
            Role::Server => self.pong(),
        }
    }

    /// The heartbeat string that `role` sends.
    pub const fn outbound_heartbeat(self, role: Role) -> &'static str {
        match role {
            Role::Client => self.pong(),
            Role::Server => self.ping(),
        }
    }

    /// The version number as used in options (`1` or `2`).
    pub const fn number(self) -> u8 {
        match self {
            ProtocolVersion::V1 => 1,
            ProtocolVersion::V2 => 2,
        }
    }
}

impl fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.number())
    }
}

/// Error for a protocol version other than 1 or 2.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("protocol version must be 1 or 2, got {0:?}")]
pub struct InvalidProtocolVersion(pub String);

impl FromStr for ProtocolVersion {
    type Err = InvalidProtocolVersion;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "1" => Ok(ProtocolVersion::V1),
            "2" => Ok(ProtocolVersion::V2),
            other => Err(InvalidProtocolVersion(other.to_owned())),
        }
    }
}

impl TryFrom<u8> for ProtocolVersion {
    type Error = InvalidProtocolVersion;
    fn try_from(v: u8) -> Result<Self, Self::Error> {
        match v {
            1 => Ok(ProtocolVersion::V1),
            2 => Ok(ProtocolVersion::V2),
            other => Err(InvalidProtocolVersion(other.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_strings_match_protocol_1_4() {
        assert_eq!(ProtocolVersion::V2.ping(), "");
        assert_eq!(ProtocolVersion::V2.pong(), "");
        assert_eq!(ProtocolVersion::V1.ping(), "#1");
        assert_eq!(ProtocolVersion::V1.pong(), "#2");
        assert_eq!(ProtocolVersion::V1.inbound_heartbeat(Role::Server), "#2");
        assert_eq!(ProtocolVersion::V1.inbound_heartbeat(Role::Client), "#1");
        assert_eq!(ProtocolVersion::default(), ProtocolVersion::V2);
        assert_eq!("1".parse::<ProtocolVersion>().unwrap(), ProtocolVersion::V1);
        assert!("3".parse::<ProtocolVersion>().is_err());
    }
}
