//! Re-authentication through the token provider (Rust-only; docs/PROTOCOL.md 14.1): its
//! phase ([`Reauth`]), what it holds back ([`Hold`]), retries with backoff, and the
//! refresh before `exp`.
//!
//! The ordering guarantee (crate docs, "Ordering guarantee") lives here: a
//! re-authentication started by a handshake that left the socket unauthenticated holds
//! both `#subscribe` requests and the outbound queue ([`Hold::SubscriptionsAndQueue`]);
//! one started by `#removeAuthToken` or an auth-related subscription rejection, and every
//! retry, holds subscriptions only; a refresh before `exp` holds nothing (the old token
//! still works).
//!
//! The continuity guarantee too: a failed attempt (the provider returned an error or did
//! not answer within `token_provider_timeout`, or the server did not accept its token)
//! never removes a channel. It releases what it held, keeps the channels that wait for it
//! pending ([`super::channels`]), and schedules the next attempt after a backoff delay
//! (`reauth_retry`), announcing it with `reauthenticationFailed { error, retry_in }`.

use socketcluster_rs_protocol::reserved as ev;
use socketcluster_rs_protocol::{EventPacket, KeyOrder};
use tokio::time::Instant;

use super::pending::Pending;
use super::timers::TimerKey;
use super::{Action, Phase, Session, raw};
use crate::auth::{BoxError, ReauthReason, TokenRequest};
use crate::events::Event;

/// What a re-authentication in progress holds back, in increasing order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Hold {
    /// Nothing (a refresh of a token that is still valid).
    Nothing,
    /// New `#subscribe` requests.
    Subscriptions,
    /// `#subscribe` requests and the outbound queue (after a handshake that left the
    /// socket unauthenticated, so that subscriptions still precede queued messages).
    SubscriptionsAndQueue,
}

impl Hold {
    fn for_reason(reason: &ReauthReason) -> Hold {
        match reason {
            ReauthReason::NoToken | ReauthReason::Rejected(_) => Hold::SubscriptionsAndQueue,
            ReauthReason::Removed | ReauthReason::SubscribeRejected(_) => Hold::Subscriptions,
            ReauthReason::Expiring => Hold::Nothing,
        }
    }
}

/// The re-authentication phase of one open connection (only ever left `Idle` with a
/// token provider). The deadline of `Provider` and `Backoff` is `Timers::reauth`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Reauth {
    /// No re-authentication in progress.
    Idle,
    /// The provider was called (call `seq`) and has not answered.
    Provider {
        seq: u64,
        hold: Hold,
        reason: ReauthReason,
    },
    /// The provider's token was sent with `#authenticate` (as `cid`); its reply is awaited.
    Authenticating {
        cid: u64,
        hold: Hold,
        reason: ReauthReason,
    },
    /// The last attempt failed; the next one starts when the backoff delay has passed.
    /// Nothing is held meanwhile.
    Backoff { reason: ReauthReason },
}

impl Reauth {
    pub(crate) fn hold(&self) -> Hold {
        match self {
            Reauth::Provider { hold, .. } | Reauth::Authenticating { hold, .. } => *hold,
            Reauth::Idle | Reauth::Backoff { .. } => Hold::Nothing,
        }
    }

    fn reason(&self) -> Option<&ReauthReason> {
        match self {
            Reauth::Provider { reason, .. }
            | Reauth::Authenticating { reason, .. }
            | Reauth::Backoff { reason } => Some(reason),
            Reauth::Idle => None,
        }
    }
}

impl Session {
    /// The re-authentication phase (`Idle` while not open).
    pub(super) fn reauth(&self) -> &Reauth {
        match &self.phase {
            Phase::Open(o) => &o.reauth,
            _ => &Reauth::Idle,
        }
    }

    fn set_reauth(&mut self, r: Reauth) {
        if let Some(open) = self.open_mut() {
            open.reauth = r;
        }
    }

    pub(super) fn holds(&self, what: Hold) -> bool {
        self.reauth().hold() >= what
    }

    pub(super) fn has_provider(&self) -> bool {
        self.opts.token_provider.is_some()
    }

    pub(super) fn is_reauth_request(&self, cid: u64) -> bool {
        matches!(self.reauth(), Reauth::Authenticating { cid: c, .. } if *c == cid)
    }

    /// Ask the provider for a token because of `reason`, unless an attempt is already
    /// under way (then what it holds grows to what `reason` needs) or waiting for its
    /// backoff delay (then that attempt serves `reason` too). Only while open and with
    /// a provider.
    pub(super) fn start_reauth(&mut self, now: Instant, reason: ReauthReason) {
        if !self.has_provider() {
            return;
        }
        let Some(open) = self.open_mut() else {
            return;
        };
        let need = Hold::for_reason(&reason);
        match &mut open.reauth {
            Reauth::Idle => {}
            Reauth::Backoff { .. } => return,
            Reauth::Provider { hold, .. } | Reauth::Authenticating { hold, .. } => {
                *hold = (*hold).max(need);
                return;
            }
        }
        let seq = self.begin_reauth(now, need, reason.clone());
        self.call_provider(seq, reason);
    }

    /// Enter [`Reauth::Provider`] for a new provider call; returns its number.
    pub(super) fn begin_reauth(&mut self, now: Instant, hold: Hold, reason: ReauthReason) -> u64 {
        self.provider_seq += 1;
        let seq = self.provider_seq;
        self.set_reauth(Reauth::Provider { seq, hold, reason });
        self.timers.reauth = Some(now + self.opts.token_provider_timeout);
        seq
    }

    /// Call the provider (call `seq`, already entered with [`Session::begin_reauth`]).
    pub(super) fn call_provider(&mut self, seq: u64, reason: ReauthReason) {
        tracing::info!(?reason, "calling the token provider");
        self.emit(Event::Reauthenticating {
            reason: reason.clone(),
        });
        let request = TokenRequest {
            reason,
            current_token: self.signed_token.clone(),
            failures: self.reauth_backoff.attempts(),
        };
        self.act(Action::CallProvider { seq, request });
    }

    /// The provider answered call `seq`.
    pub(crate) fn on_provider_result(
        &mut self,
        now: Instant,
        seq: u64,
        r: Result<String, BoxError>,
    ) {
        let (hold, reason) = match self.reauth() {
            Reauth::Provider {
                seq: s,
                hold,
                reason,
            } if *s == seq => (*hold, reason.clone()),
            _ => return,
        };
        match r {
            Ok(token) => {
                self.timers.reauth = None;
                let cid = self.cids.next_cid();
                let data = raw(serde_json::to_string(&token).unwrap_or_default());
                let p = EventPacket::invoke(ev::AUTHENTICATE, Some(data), cid);
                // Bypasses the (held) outbound queue: it must go before anything else.
                self.write_packet(p.encode(KeyOrder::Client));
                let deadline = now + self.opts.ack_timeout;
                self.timers.add_ack(deadline, TimerKey::Sent(cid));
                self.pending.insert(
                    cid,
                    Pending::Authenticate {
                        token,
                        reply: None,
                        deadline,
                    },
                );
                self.set_reauth(Reauth::Authenticating { cid, hold, reason });
            }
            Err(e) => {
                tracing::warn!(error = %e, "the token provider failed");
                self.reauth_attempt_failed(now, e.to_string());
            }
        }
    }

    /// The provider's deadline or the backoff delay has passed.
    pub(super) fn on_reauth_deadline(&mut self, now: Instant) {
        match self.reauth().clone() {
            Reauth::Provider { .. } => {
                self.act(Action::CancelProvider);
                let after = self.opts.token_provider_timeout;
                self.reauth_attempt_failed(
                    now,
                    format!(
                        "TimeoutError: the token provider did not answer within {} ms",
                        after.as_millis()
                    ),
                );
            }
            Reauth::Backoff { reason } => {
                // A retry holds subscriptions only: the queue already went out.
                let hold = Hold::for_reason(&reason).min(Hold::Subscriptions);
                let seq = self.begin_reauth(now, hold, reason.clone());
                self.call_provider(seq, reason);
            }
            Reauth::Idle | Reauth::Authenticating { .. } => {}
        }
    }

    /// The token was accepted: channels waiting for it are requested again (each with
    /// its retry after a re-authentication), then pending subscriptions, then the queue.
    pub(super) fn reauth_succeeded(&mut self, now: Instant) {
        self.set_reauth(Reauth::Idle);
        self.timers.reauth = None;
        if !self.retry_channels_awaiting_reauth() {
            // Nothing to confirm it by: the attempt is a success as it stands.
            self.reauth_backoff.reset();
        }
        self.release_held(now);
    }

    /// The current attempt failed with `error`.
    pub(super) fn reauth_attempt_failed(&mut self, now: Instant, error: String) {
        if let Some(reason) = self.reauth().reason().cloned() {
            self.schedule_retry(now, reason, error);
        }
    }

    /// A channel was rejected for an auth reason again right after the re-authentication
    /// it waited for succeeded: that attempt did not help, so the next one waits for the
    /// backoff delay (unless one is already under way or waiting).
    pub(super) fn reauth_did_not_help(&mut self, now: Instant, channel: String, error: String) {
        if self.has_provider() && self.is_open() && *self.reauth() == Reauth::Idle {
            self.schedule_retry(now, ReauthReason::SubscribeRejected(channel), error);
        }
    }

    /// An attempt failed: release what it held and, while something still needs a
    /// token, schedule the next attempt after the backoff delay. Channels waiting for it
    /// stay pending.
    fn schedule_retry(&mut self, now: Instant, reason: ReauthReason, error: String) {
        let needed = match &reason {
            // Only the rejected channels needed it; the application may have dropped them.
            ReauthReason::SubscribeRejected(_) => self.channels_await_reauth(),
            _ => true,
        };
        let retry_in = needed.then(|| self.reauth_backoff.next_delay(false, (self.unit_random)()));
        match retry_in {
            Some(delay) => {
                tracing::info!(error = %error, ?delay, "re-authentication failed; retrying");
                self.set_reauth(Reauth::Backoff { reason });
                self.timers.reauth = Some(now + delay);
            }
            None => {
                self.set_reauth(Reauth::Idle);
                self.timers.reauth = None;
            }
        }
        self.emit(Event::ReauthenticationFailed { error, retry_in });
        self.release_held(now);
    }

    /// After an attempt: pending subscriptions (if this connection released them), the
    /// queue, and the next refresh.
    fn release_held(&mut self, now: Instant) {
        if self.is_open() {
            self.process_pending_if_released();
            self.flush_queue();
            self.schedule_refresh(now);
        }
    }

    /// While connected with a provider, call it `reauth_margin` before the token's `exp`
    /// (at most a third of the token's lifetime before it).
    pub(super) fn schedule_refresh(&mut self, now: Instant) {
        self.timers.refresh = None;
        if !self.has_provider() || !self.is_open() || !self.is_authenticated() {
            return;
        }
        let Some(claims) = self.claims.as_ref() else {
            return;
        };
        let Some(exp) = claims.get("exp").and_then(serde_json::Value::as_f64) else {
            return;
        };
        let mut margin = self.opts.reauth_margin.as_secs_f64();
        let iat = claims.get("iat").and_then(serde_json::Value::as_f64);
        let mut unix_now = (self.unix_now)();
        if let Some(iat) = iat
            && exp > iat
        {
            margin = margin.min((exp - iat) / 3.0);
            // The server has just accepted this token, so its clock reads between `iat`
            // and `exp`. A local wall clock outside that range is wrong (skewed, or it
            // jumped): follow the token's own timeline instead, as if it had just been
            // issued. Without this, a clock ahead by more than the lifetime would refresh
            // in a tight loop and one behind would refresh too late.
            if unix_now < iat || unix_now >= exp {
                tracing::warn!(
                    clock_skew_s = unix_now - iat,
                    "the local clock disagrees with the token's iat/exp; scheduling the refresh from the token's lifetime"
                );
                unix_now = iat;
            }
        } else if unix_now >= exp {
            // Accepted by the server but already expired by our clock, and no `iat` to
            // tell the lifetime: schedule nothing (the server removes the token when it
            // expires, which asks the provider) rather than refresh in a loop.
            tracing::warn!("the local clock is past the token's exp; no refresh scheduled");
            return;
        }
        // The deadline is a monotonic instant: later wall-clock jumps do not move it.
        let wait = (exp - margin - unix_now).max(0.0);
        // An `exp` too far away to schedule (or not a number) schedules nothing.
        let Some(at) = std::time::Duration::try_from_secs_f64(wait)
            .ok()
            .and_then(|d| now.checked_add(d))
        else {
            return;
        };
        tracing::debug!(wait_s = wait, "token refresh scheduled");
        self.timers.refresh = Some(at);
    }
}
