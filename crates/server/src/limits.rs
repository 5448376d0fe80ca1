//! Resource limits: every per-socket resource is bounded, with a documented default and
//! a defined behaviour when exceeded.

use std::time::Duration;

/// Close code used when a socket exceeds its outbound queue limit (a client that does
/// not read) or otherwise violates a server policy: **1008** ("Encountered a policy
/// violation"). JS clients reconnect with backoff after it.
pub const CLOSE_POLICY_VIOLATION: u16 = 1008;

/// Close code for an inbound message larger than [`Limits::max_payload`]: **1009**
/// ("Message was too big to process"), like the JS server's `maxPayload`.
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
/// | `inbound_rate` | none | messages per second from one client; above it the server stops reading that socket until the budget refills (TCP backpressure), nothing is dropped |
/// | `max_inbound_queue` | 64 frames | frames read but not yet processed (while middleware of an earlier message is pending); above it the server stops reading that socket |
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
        self.refill();
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            None
        } else {
            Some(Duration::from_secs_f64(-self.tokens / self.rate))
        }
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
