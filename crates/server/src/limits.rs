//! Resource limits: every per-socket resource is bounded, with a documented default and
//! a defined behaviour when exceeded.

use std::time::Duration;

/// Close code used when a socket exceeds its outbound queue limit (a client that does
/// not read), stays above its inbound rate limits for
/// [`Limits::throttle_close_after`] (reason `Inbound rate limit exceeded`) or otherwise
/// violates a server policy: **1008** ("Encountered a policy violation"). JS clients
/// reconnect with backoff after it.
pub const CLOSE_POLICY_VIOLATION: u16 = 1008;

/// Close code for an inbound message larger than [`Limits::max_payload`], or a batch with
/// more than [`Limits::max_batch_items`] elements: **1009** ("Message was too big to
/// process"), like the JS server's `maxPayload`.
pub const CLOSE_MESSAGE_TOO_BIG: u16 = 1009;

/// Per-socket limits.
///
/// | limit | default | when exceeded |
/// |---|---|---|
/// | `max_payload` | 8 MiB | the socket is closed with 1009 (JS: `maxPayload`, default 100 MiB) |
/// | `socket_channel_limit` | 10 000 | `#subscribe` fails with the JS `BrokerError` "tried to exceed the channel subscription limit" (JS: `socketChannelLimit`, default unlimited) |
/// | `max_channel_name_len` | 1024 bytes | `#subscribe`/`#publish` fail with `InvalidActionError` "Channel name exceeds the maximum length of N" (no JS equivalent) |
/// | `max_outbound_queue_bytes` | 8 MiB | frames waiting to be written to a slow client; the socket is dropped and reported closed with 1008 (no JS equivalent: JS buffers without limit) |
/// | `max_pending_invokes` | 1024 | server → client invokes awaiting a response; further invokes fail with [`crate::InvokeError::TooManyPending`] |
/// | `inbound_rate` | none | messages per second from one client; above it the server stops reading that socket until the budget refills (TCP backpressure), nothing is dropped; a socket still above it after `throttle_close_after` is closed with 1008 `Inbound rate limit exceeded` |
/// | `inbound_byte_rate` | none | the same for bytes per second (message payload sizes) |
/// | `throttle_close_after` | 10 s | how long a socket may stay throttled (every message over budget) before it is closed with 1008 |
/// | `max_connections_per_ip` | 1000 | live WebSocket connections from one remote IP; further upgrades get HTTP 429 `Too many connections from this address` |
/// | `handshake_rate_per_ip` | 50/s, burst 200 | WebSocket upgrades per second from one remote IP; above it HTTP 429 `Too many handshakes from this address` |
/// | (per-IP keys) | | IPv4 addresses count one by one, IPv6 addresses per /64 network |
/// | `per_ip_limits_on_loopback` | false | whether the two per-IP limits apply to loopback clients (127.0.0.0/8, ::1): off so that local benchmarks and a reverse proxy on the same host are not limited |
/// | `max_inbound_queue` | 64 frames | frames read but not yet processed (while middleware of an earlier message is pending); above it, or above `max_payload` bytes queued, the server stops reading that socket |
/// | `max_http_header_bytes` | 16 KiB | an upgrade request with bigger headers gets HTTP 431 |
/// | `close_timeout` | 3 s | a closing socket waits this long for the peer's close frame and then for its end of TCP, discarding at most [`Limits::linger_bytes`] (2 × `max_payload`) of further input, before dropping TCP |
/// | `max_batch_items` | 4096 | a batch (one JSON array message) with more elements closes the socket with 1009 `Batch exceeds N items`, none of its elements processed (no JS equivalent) |
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Limits {
    /// Largest inbound WebSocket message in bytes.
    pub max_payload: usize,
    /// Channels one socket may be subscribed to (`None`: unlimited, the JS default).
    pub socket_channel_limit: Option<usize>,
    /// Longest channel name in bytes accepted from clients.
    pub max_channel_name_len: usize,
    /// Bytes queued for one socket's writer before the socket is dropped.
    pub max_outbound_queue_bytes: usize,
    /// Server → client invokes awaiting a response, per socket.
    pub max_pending_invokes: usize,
    /// Inbound message rate limit per socket.
    pub inbound_rate: Option<RateLimit>,
    /// Frames read ahead of processing, per socket.
    pub max_inbound_queue: usize,
    /// Size limit of the HTTP upgrade request head.
    pub max_http_header_bytes: usize,
    /// How long a closing socket waits for the peer's close frame, and then for the
    /// peer to close TCP (lingering close, RFC 6455 §7.1.1: what the peer still sends is
    /// read and discarded, at most [`Limits::linger_bytes`]), before dropping TCP.
    pub close_timeout: Duration,
    /// Most elements in one inbound batch (a JSON array message). Default 4096: the JS
    /// client sends at most what it buffered during one `batchInterval`.
    pub max_batch_items: usize,
    /// Inbound byte rate limit per socket (payload bytes). Default none.
    pub inbound_byte_rate: Option<RateLimit>,
    /// How long a socket may stay over `inbound_rate` / `inbound_byte_rate` (throttled)
    /// before it is closed with 1008. Default 10 s.
    pub throttle_close_after: Duration,
    /// Live WebSocket connections per remote IP (`None`: unlimited). Default 1000.
    pub max_connections_per_ip: Option<usize>,
    /// WebSocket upgrades per second per remote IP (`None`: unlimited). Default 50 per
    /// second, burst 200.
    pub handshake_rate_per_ip: Option<RateLimit>,
    /// Apply the per-IP limits to loopback clients too. Default false.
    pub per_ip_limits_on_loopback: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_payload: 8 << 20,
            socket_channel_limit: Some(10_000),
            max_channel_name_len: 1024,
            max_outbound_queue_bytes: 8 << 20,
            max_pending_invokes: 1024,
            inbound_rate: None,
            max_inbound_queue: 64,
            max_http_header_bytes: 16 << 10,
            close_timeout: Duration::from_secs(3),
            max_batch_items: 4096,
            inbound_byte_rate: None,
            throttle_close_after: Duration::from_secs(10),
            max_connections_per_ip: Some(1000),
            handshake_rate_per_ip: Some(RateLimit {
                per_second: 50,
                burst: 200,
            }),
            per_ip_limits_on_loopback: false,
        }
    }
}

impl Limits {
    /// Bytes a closing socket reads and discards while it waits for the peer to close
    /// TCP: twice `max_payload`, at least 1 MiB (the rest of an oversized message and
    /// then some). Beyond it, TCP is dropped.
    pub fn linger_bytes(&self) -> usize {
        self.max_payload.saturating_mul(2).max(1 << 20)
    }
    /// Set `max_payload`.
    pub fn max_payload(mut self, bytes: usize) -> Self {
        self.max_payload = bytes;
        self
    }
    /// Set `socket_channel_limit`.
    pub fn socket_channel_limit(mut self, limit: Option<usize>) -> Self {
        self.socket_channel_limit = limit;
        self
    }
    /// Set `max_channel_name_len`.
    pub fn max_channel_name_len(mut self, bytes: usize) -> Self {
        self.max_channel_name_len = bytes;
        self
    }
    /// Set `max_outbound_queue_bytes`.
    pub fn max_outbound_queue_bytes(mut self, bytes: usize) -> Self {
        self.max_outbound_queue_bytes = bytes;
        self
    }
    /// Set `max_pending_invokes`.
    pub fn max_pending_invokes(mut self, n: usize) -> Self {
        self.max_pending_invokes = n;
        self
    }
    /// Set `close_timeout`.
    pub fn close_timeout(mut self, timeout: Duration) -> Self {
        self.close_timeout = timeout;
        self
    }
    /// Set `max_batch_items`.
    pub fn max_batch_items(mut self, n: usize) -> Self {
        self.max_batch_items = n;
        self
    }
    /// Set `inbound_byte_rate`.
    pub fn inbound_byte_rate(mut self, rate: Option<RateLimit>) -> Self {
        self.inbound_byte_rate = rate;
        self
    }
    /// Set `throttle_close_after`.
    pub fn throttle_close_after(mut self, after: Duration) -> Self {
        self.throttle_close_after = after;
        self
    }
    /// Set `max_connections_per_ip`.
    pub fn max_connections_per_ip(mut self, max: Option<usize>) -> Self {
        self.max_connections_per_ip = max;
        self
    }
    /// Set `handshake_rate_per_ip`.
    pub fn handshake_rate_per_ip(mut self, rate: Option<RateLimit>) -> Self {
        self.handshake_rate_per_ip = rate;
        self
    }
    /// Set `per_ip_limits_on_loopback`.
    pub fn per_ip_limits_on_loopback(mut self, on: bool) -> Self {
        self.per_ip_limits_on_loopback = on;
        self
    }
    /// Set `inbound_rate`.
    pub fn inbound_rate(mut self, rate: Option<RateLimit>) -> Self {
        self.inbound_rate = rate;
        self
    }
}

/// A token-bucket rate limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    /// Sustained messages per second.
    pub per_second: u32,
    /// Burst size (bucket capacity).
    pub burst: u32,
}

/// Token bucket used by the socket task.
#[derive(Debug)]
pub(crate) struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: tokio::time::Instant,
}

impl Bucket {
    pub(crate) fn new(limit: RateLimit) -> Self {
        Bucket {
            rate: f64::from(limit.per_second.max(1)),
            burst: f64::from(limit.burst.max(1)),
            tokens: f64::from(limit.burst.max(1)),
            last: tokio::time::Instant::now(),
        }
    }

    fn refill(&mut self) {
        let now = tokio::time::Instant::now();
        let dt = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
    }

    /// Account for one message. Returns how long to stop reading when the budget is
    /// exhausted (the bucket may go into debt by one message).
    pub(crate) fn take(&mut self) -> Option<Duration> {
        self.take_n(1)
    }

    /// Account for `n` units (messages or bytes); see [`Bucket::take`].
    pub(crate) fn take_n(&mut self, n: usize) -> Option<Duration> {
        self.refill();
        self.tokens -= n as f64;
        if self.tokens >= 0.0 {
            None
        } else {
            Some(Duration::from_secs_f64(-self.tokens / self.rate))
        }
    }

    /// Take one token if there is one (never goes into debt).
    pub(crate) fn try_take(&mut self) -> bool {
        self.refill();
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Whether the bucket has refilled completely.
    pub(crate) fn is_full(&mut self) -> bool {
        self.refill();
        self.tokens >= self.burst
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn bucket_refills_at_the_configured_rate() {
        let mut b = Bucket::new(RateLimit {
            per_second: 10,
            burst: 2,
        });
        assert!(b.take().is_none());
        assert!(b.take().is_none());
        let wait = b.take().unwrap();
        assert_eq!(wait, Duration::from_millis(100));
        tokio::time::advance(Duration::from_millis(200)).await;
        assert!(b.take().is_none());
    }
}
