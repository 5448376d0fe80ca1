//! Requests sent and waiting for their response, by cid.

use std::time::Duration;

use tokio::time::Instant;

use crate::command::{AuthReply, InvokeReply};

/// A request on the wire whose response (`rid`) is awaited.
pub(super) enum Pending {
    /// An application invoke (also `#publish` with acknowledgement).
    Call {
        event: String,
        reply: InvokeReply,
        timeout: Duration,
        deadline: Instant,
    },
    /// `#handshake`, with the token it carried.
    Handshake {
        token: Option<String>,
        deadline: Instant,
    },
    /// `#subscribe` (no timeout, like the JS client).
    Subscribe { channel: String },
    /// `#authenticate`, from the application (`reply`) or from a re-authentication (the
    /// one whose cid [`super::Reauth::Authenticating`] holds).
    Authenticate {
        token: String,
        reply: Option<AuthReply>,
        deadline: Instant,
    },
}

/// Hasher for the pending-request map, whose keys are our own sequential cids: one
/// multiplication (Fibonacci hashing spreads consecutive keys over the table's control
/// bytes) instead of SipHash, which protects against keys chosen by an attacker; these
/// are not (a server's `rid` is only ever looked up).
#[derive(Clone, Copy, Default)]
pub(super) struct CidHash;

impl std::hash::BuildHasher for CidHash {
    type Hasher = CidHasher;
    fn build_hasher(&self) -> CidHasher {
        CidHasher(0)
    }
}

#[derive(Default)]
pub(super) struct CidHasher(u64);

impl std::hash::Hasher for CidHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}
