//! Deadlines: ack timeouts of queued and sent requests, the server's ping timeout, the
//! dial timeout, the scheduled reconnect, the token refresh and batching.

use std::collections::BTreeSet;

use socketcluster_rs_protocol::CloseCode;
use socketcluster_rs_protocol::reserved as ev;
use tokio::time::Instant;

use super::pending::Pending;
use super::{Session, local_error};
use crate::auth::ReauthReason;
use crate::error::InvokeError;
use crate::events::Event;

/// Whose ack timeout a deadline is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum TimerKey {
    /// A message in the outbound queue (by queue id).
    Queued(u64),
    /// A request on the wire (by cid).
    Sent(u64),
}

/// Every deadline of the session; the driver arms one timer for the earliest.
#[derive(Default)]
pub(super) struct Timers {
    acks: BTreeSet<(Instant, TimerKey)>,
    /// The server must ping (or answer) before this.
    pub(super) ping: Option<Instant>,
    /// The WebSocket must open before this (`connect_timeout`).
    pub(super) dial: Option<Instant>,
    /// The scheduled reconnect.
    pub(super) reconnect: Option<Instant>,
    /// Ask the token provider for a fresh token (before `exp`).
    pub(super) refresh: Option<Instant>,
    /// The token provider's deadline, or the end of a re-authentication backoff.
    pub(super) reauth: Option<Instant>,
    /// Write the batch buffer.
    pub(super) batch_flush: Option<Instant>,
    /// End the batching started by `batch_on_handshake`.
    pub(super) batch_stop: Option<Instant>,
}

impl Timers {
    pub(super) fn next(&self) -> Option<Instant> {
        [
            self.acks.first().map(|(t, _)| *t),
            self.ping,
            self.dial,
            self.reconnect,
            self.refresh,
            self.reauth,
            self.batch_flush,
            self.batch_stop,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    pub(super) fn add_ack(&mut self, at: Instant, key: TimerKey) {
        self.acks.insert((at, key));
    }

    pub(super) fn remove_ack(&mut self, at: Instant, key: TimerKey) {
        self.acks.remove(&(at, key));
    }

    pub(super) fn clear_acks(&mut self) {
        self.acks.clear();
    }

    /// The connection is gone: only the reconnect and the ack timeouts of what is still
    /// queued can matter (the caller clears those it fails).
    pub(super) fn clear_connection(&mut self) {
        self.ping = None;
        self.dial = None;
        self.refresh = None;
        self.reauth = None;
        self.batch_flush = None;
        self.batch_stop = None;
    }

    fn pop_due_ack(&mut self, now: Instant) -> Option<TimerKey> {
        let &(t, key) = self.acks.first()?;
        if t > now {
            return None;
        }
        self.acks.pop_first();
        Some(key)
    }
}

/// Take `slot` if its deadline has passed.
fn due(slot: &mut Option<Instant>, now: Instant) -> bool {
    if slot.is_some_and(|t| t <= now) {
        *slot = None;
        true
    } else {
        false
    }
}

impl Session {
    /// Deadlines up to `now` have passed.
    pub(crate) fn on_timer(&mut self, now: Instant) {
        while let Some(key) = self.timers.pop_due_ack(now) {
            self.on_ack_timeout(now, key);
        }
        if due(&mut self.timers.dial, now) {
            self.close_connection(now, CloseCode::CONNECT_TIMEOUT, None, false);
        }
        if due(&mut self.timers.ping, now) {
            tracing::debug!("server ping timed out");
            self.close_connection(now, CloseCode::PING_TIMEOUT, None, true);
        }
        if due(&mut self.timers.reconnect, now) {
            self.start_connect(now);
        }
        if due(&mut self.timers.refresh, now) {
            self.start_reauth(now, ReauthReason::Expiring);
        }
        if due(&mut self.timers.reauth, now) {
            self.on_reauth_deadline(now);
        }
        if due(&mut self.timers.batch_stop, now) && !self.outbound.batching_explicit {
            self.stop_batching();
        }
        if due(&mut self.timers.batch_flush, now) {
            self.flush_batch();
            if self.outbound.batching {
                self.timers.batch_flush = Some(now + self.opts.batch_interval);
            }
        }
    }

    fn on_ack_timeout(&mut self, now: Instant, key: TimerKey) {
        match key {
            TimerKey::Queued(qid) => self.expire_queued(qid),
            TimerKey::Sent(cid) => match self.pending.remove(&cid) {
                Some(Pending::Call {
                    event,
                    reply,
                    timeout,
                    ..
                }) => {
                    let _ = reply.send(Err(InvokeError::Timeout {
                        event,
                        after: timeout,
                    }));
                }
                Some(Pending::Handshake { .. }) => {
                    let err = local_error(
                        "TimeoutError",
                        "Event response for #handshake event timed out",
                    );
                    let reason = format!("{}: {}", err.name(), err.message());
                    self.emit(Event::Error(err.clone()));
                    self.last_handshake_error = Some(err);
                    self.close_connection(now, CloseCode::HANDSHAKE_FAILED, Some(reason), true);
                }
                Some(Pending::Authenticate { reply, .. }) => {
                    if let Some(r) = reply {
                        let _ = r.send(Err(InvokeError::Timeout {
                            event: ev::AUTHENTICATE.to_owned(),
                            after: self.opts.ack_timeout,
                        }));
                    }
                    if self.is_reauth_request(cid) {
                        self.reauth_attempt_failed(
                            now,
                            "TimeoutError: Event response for #authenticate event timed out"
                                .to_owned(),
                        );
                    }
                }
                Some(p @ Pending::Subscribe { .. }) => {
                    self.pending.insert(cid, p);
                }
                None => {}
            },
        }
    }
}
