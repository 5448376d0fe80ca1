//! Unit tests of the session state machine: no socket, no driver. Each test feeds
//! inputs with explicit instants (tokio time paused) and checks the frames, actions and
//! events that come out.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::{broadcast, oneshot, watch};
use tokio::time::Instant;

use super::*;
use socketcluster_rs_protocol::{CloseCode, NotRecovered, StreamPosition};

use crate::auth::ReauthReason;
use crate::channel::{ChannelState, ChannelStatus, Message, SubscribeOptions};
use crate::command::{self, CommandReceiver, CommandSender};
use crate::error::{SubscribeError, TokenStoreError};
use crate::events::Event;
use crate::options::ClientOptions;

/// The wall clock the tests pretend it is (seconds since the epoch).
const UNIX_NOW: f64 = 1_800_000_000.0;

struct Harness {
    s: Session,
    events: broadcast::Receiver<Event>,
    snapshot: watch::Receiver<Snapshot>,
    _cmd: (CommandSender, CommandReceiver),
}

fn options(provider: bool) -> ClientOptions {
    let mut o = ClientOptions::new("ws://test.invalid:8000");
    if provider {
        // The session never calls it: it asks the driver to ([`Action::CallProvider`]).
        o.token_provider = Some(crate::auth::boxed_provider(|_req: TokenRequest| async {
            Ok::<_, std::io::Error>(String::new())
        }));
    }
    o
}

/// An unsigned-looking JWT with the given claims (the client never verifies).
fn jwt(claims: Value) -> String {
    use base64::Engine;
    let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!(
        "{}.{}.sig",
        e.encode(br#"{"alg":"HS256","typ":"JWT"}"#),
        e.encode(claims.to_string())
    )
}

fn unauthenticated() -> Value {
    json!({"id": "s1", "pingTimeout": 20000, "isAuthenticated": false})
}

fn authenticated() -> Value {
    json!({"id": "s1", "pingTimeout": 20000, "isAuthenticated": true})
}

impl Harness {
    fn new(o: ClientOptions) -> Harness {
        let (tx, rx) = command::channel(16);
        let (etx, erx) = broadcast::channel(1024);
        let (stx, srx) = watch::channel(Snapshot::initial(o.auto_connect));
        let mut s = Session::new(Arc::new(o), tx.downgrade(), etx, stx);
        s.unix_now = || UNIX_NOW;
        s.unit_random = || 0.0;
        Harness {
            s,
            events: erx,
            snapshot: srx,
            _cmd: (tx, rx),
        }
    }

    /// Frames written since the last call (JSON, or the text itself for non-JSON).
    fn frames(&mut self) -> Vec<Value> {
        std::mem::take(&mut self.s.outputs().frames)
            .into_iter()
            .map(|t| serde_json::from_str(&t).unwrap_or(Value::String(t)))
            .collect()
    }

    fn actions(&mut self) -> Vec<Action> {
        self.s.outputs().actions.drain(..).collect()
    }

    /// The events emitted since the last call.
    fn take_events(&mut self) -> Vec<Event> {
        let mut v = Vec::new();
        while let Ok(e) = self.events.try_recv() {
            v.push(e);
        }
        v
    }

    /// Names of the events emitted since the last call.
    fn events(&mut self) -> Vec<&'static str> {
        self.take_events().iter().map(Event::name).collect()
    }

    /// `retry_in` of each `reauthenticationFailed` emitted since the last call.
    fn failures(&mut self) -> Vec<Option<Duration>> {
        self.take_events()
            .into_iter()
            .filter_map(|e| match e {
                Event::ReauthenticationFailed { retry_in, .. } => Some(retry_in),
                _ => None,
            })
            .collect()
    }

    fn command(&mut self, c: Command) {
        self.s.on_command(Instant::now(), c);
    }

    fn text(&mut self, v: Value) {
        self.s.on_text(Instant::now(), &v.to_string());
    }

    fn reply(&mut self, cid: &Value, data: Value) {
        self.text(json!({"rid": cid, "data": data}));
    }

    fn reply_error(&mut self, cid: &Value, error: Value) {
        self.text(json!({"rid": cid, "error": error}));
    }

    /// Connect: dial, socket open, token loaded (`token`), `#handshake` answered with
    /// `status`.
    fn open(&mut self, token: Option<&str>, status: Value) {
        let now = Instant::now();
        self.command(Command::Connect { done: None });
        assert!(matches!(self.actions()[..], [Action::Dial]));
        assert!(self.s.on_socket_open(now));
        assert!(matches!(self.actions()[..], [Action::LoadToken]));
        assert!(
            self.frames().is_empty(),
            "nothing before the stored token is read"
        );
        self.s.on_token_loaded(now, Ok(token.map(str::to_owned)));
        let hs = self.frames();
        assert_eq!(hs.len(), 1, "{hs:?}");
        assert_eq!(hs[0]["event"], "#handshake");
        assert_eq!(hs[0]["data"]["authToken"], json!(token));
        self.reply(&hs[0]["cid"], status);
    }

    fn subscribe(&mut self, channel: &str, o: SubscribeOptions) -> ChannelHandle {
        let (tx, queue) = crate::queue::bounded(16);
        let (rtx, mut rrx) = oneshot::channel();
        self.command(Command::Subscribe {
            channel: channel.to_owned(),
            options: o,
            consumer_id: 1,
            tx,
            reply: rtx,
        });
        ChannelHandle {
            _queue: queue,
            status: rrx.try_recv().expect("the status is handed back at once"),
        }
    }

    fn transmit(&mut self, event: &str) {
        self.command(Command::Transmit {
            event: event.to_owned(),
            data: None,
        });
    }

    fn reauth(&self) -> Reauth {
        self.s.reauth().clone()
    }

    fn provider_call(&mut self) -> (u64, ReauthReason) {
        let actions = self.actions();
        let calls: Vec<_> = actions
            .into_iter()
            .filter_map(|a| match a {
                Action::CallProvider { seq, request } => Some((seq, request.reason)),
                _ => None,
            })
            .collect();
        assert_eq!(calls.len(), 1, "one provider call: {calls:?}");
        calls
            .into_iter()
            .next()
            .unwrap_or((0, ReauthReason::NoToken))
    }

    fn advance_to(&mut self, at: Instant) {
        self.s.on_timer(at);
    }
}

struct ChannelHandle {
    _queue: crate::queue::Queue<Message>,
    status: watch::Receiver<ChannelStatus>,
}

fn events_of(frames: &[Value]) -> Vec<String> {
    frames
        .iter()
        .map(|f| match f["event"].as_str() {
            Some(e) => match f["data"]["channel"].as_str() {
                Some(c) => format!("{e} {c}"),
                None => e.to_owned(),
            },
            None => f.to_string(),
        })
        .collect()
}

// ---------------------------------------------------------------- connection phases

#[tokio::test(start_paused = true)]
async fn dialing_times_out_with_4007_and_a_reconnect_is_scheduled() {
    let mut h = Harness::new(options(false));
    let t0 = Instant::now();
    h.s.start(t0);
    assert!(matches!(h.actions()[..], [Action::Dial]));
    assert_eq!(h.s.poll_timeout(), Some(t0 + Duration::from_secs(20)));
    h.events();
    h.advance_to(t0 + Duration::from_secs(20));
    let actions = h.actions();
    assert!(
        matches!(
            &actions[..],
            [Action::CloseSocket {
                frame: CloseFrame::None,
                ..
            }]
        ),
        "{actions:?}"
    );
    assert_eq!(h.events(), ["connectAbort", "close", "error"]);
    let delay = h.snapshot.borrow().pending_reconnect.expect("a reconnect");
    let at = h.s.poll_timeout().expect("the reconnect deadline");
    assert_eq!(at, t0 + Duration::from_secs(20) + delay);
    h.advance_to(at);
    assert!(matches!(h.actions()[..], [Action::Dial]));
}

#[tokio::test(start_paused = true)]
async fn the_handshake_waits_for_the_stored_token_and_survives_a_store_failure() {
    let mut h = Harness::new(options(false));
    let now = Instant::now();
    h.s.start(now);
    h.actions();
    assert!(h.s.on_socket_open(now));
    assert!(matches!(h.actions()[..], [Action::LoadToken]));
    assert!(h.frames().is_empty());
    h.events();
    h.s.on_token_loaded(
        now,
        Err(TokenStoreError(std::io::Error::other("disk on fire"))),
    );
    assert_eq!(h.events(), ["error"]);
    let f = h.frames();
    assert_eq!(f[0]["event"], "#handshake");
    assert_eq!(f[0]["data"], json!({"authToken": null}));
}

#[tokio::test(start_paused = true)]
async fn an_unanswered_handshake_aborts_with_4003_at_the_ack_timeout() {
    let mut h = Harness::new(options(false));
    let t0 = Instant::now();
    h.s.start(t0);
    assert!(h.s.on_socket_open(t0));
    h.s.on_token_loaded(t0, Ok(None));
    h.frames();
    h.actions();
    h.events();
    h.advance_to(t0 + Duration::from_secs(10));
    let actions = h.actions();
    assert!(
        matches!(&actions[..], [Action::CloseSocket { frame: CloseFrame::Code(4003, r), .. }] if r.is_empty()),
        "{actions:?}"
    );
    assert_eq!(h.events(), ["error", "connectAbort", "close", "error"]);
}

#[tokio::test(start_paused = true)]
async fn a_silent_server_is_dropped_with_4000_and_pings_keep_it_alive() {
    let mut h = Harness::new(options(false));
    let t0 = Instant::now();
    h.open(
        None,
        json!({"id": "s1", "pingTimeout": 500, "isAuthenticated": false}),
    );
    h.actions();
    h.advance_to(t0 + Duration::from_millis(400));
    h.s.on_text(t0 + Duration::from_millis(400), ""); // a version 2 ping
    assert_eq!(h.frames(), [json!("")], "answered with a pong");
    h.advance_to(t0 + Duration::from_millis(899));
    assert!(h.actions().is_empty(), "the ping reset the deadline");
    h.events();
    h.advance_to(t0 + Duration::from_millis(900));
    let actions = h.actions();
    assert!(
        matches!(
            &actions[..],
            [
                Action::CloseSocket {
                    frame: CloseFrame::Code(4000, _),
                    ..
                },
                Action::Dial
            ]
        ),
        "closed, and reconnecting at once (4000): {actions:?}"
    );
    assert_eq!(h.events(), ["disconnect", "close", "error", "connecting"]);
}

#[tokio::test(start_paused = true)]
async fn without_auto_subscribe_nothing_is_requested_until_process_pending() {
    let mut o = options(false);
    o.auto_subscribe_on_connect = false;
    let mut h = Harness::new(o);
    let _a = h.subscribe("a", SubscribeOptions::new());
    h.open(None, unauthenticated());
    assert!(h.frames().is_empty());
    h.command(Command::ProcessPending);
    assert_eq!(events_of(&h.frames()), ["#subscribe a"]);
}

#[tokio::test(start_paused = true)]
async fn frames_queued_before_a_close_are_handed_to_the_closer() {
    let mut h = Harness::new(options(false));
    h.open(None, unauthenticated());
    h.frames();
    h.actions();
    h.transmit("last");
    h.command(Command::Disconnect {
        code: CloseCode(4321),
        reason: Some("bye".into()),
    });
    assert!(h.frames().is_empty());
    let actions = h.actions();
    let [Action::CloseSocket { leftover, frame }] = &actions[..] else {
        panic!("{actions:?}")
    };
    assert_eq!(leftover.len(), 1);
    assert!(leftover[0].contains("\"last\""));
    assert_eq!(*frame, CloseFrame::Code(4321, "bye".into()));
}

// ---------------------------------------------------------------- re-authentication

#[tokio::test(start_paused = true)]
async fn unauthenticated_handshake_holds_subscriptions_and_queue_until_the_token_is_accepted() {
    let mut h = Harness::new(options(true));
    let _a = h.subscribe("private/a", SubscribeOptions::new());
    h.transmit("queued");
    h.open(None, unauthenticated());
    assert!(
        h.frames().is_empty(),
        "nothing before the re-authentication"
    );
    let (seq, reason) = h.provider_call();
    assert_eq!(reason, ReauthReason::NoToken);
    assert_eq!(
        h.reauth(),
        Reauth::Provider {
            seq,
            hold: Hold::SubscriptionsAndQueue,
            reason: ReauthReason::NoToken
        }
    );
    let ev = h.events();
    let connect = ev.iter().position(|e| *e == "connect");
    let calling = ev.iter().position(|e| *e == "reauthenticating");
    assert!(connect < calling && connect.is_some(), "{ev:?}");

    h.s.on_provider_result(Instant::now(), seq, Ok("fresh".into()));
    let f = h.frames();
    assert_eq!(events_of(&f), ["#authenticate"]);
    assert_eq!(f[0]["data"], "fresh");
    let cid = f[0]["cid"].as_u64().unwrap_or(0);
    assert_eq!(
        h.reauth(),
        Reauth::Authenticating {
            cid,
            hold: Hold::SubscriptionsAndQueue,
            reason: ReauthReason::NoToken
        }
    );
    h.reply(
        &json!(cid),
        json!({"isAuthenticated": true, "authError": null}),
    );
    assert_eq!(
        events_of(&h.frames()),
        ["#subscribe private/a", "queued"],
        "subscriptions first, then the queue in call order"
    );
    assert!(matches!(&h.actions()[..], [Action::SaveToken(t)] if t == "fresh"));
    assert_eq!(h.reauth(), Reauth::Idle);
}

#[tokio::test(start_paused = true)]
async fn a_failing_provider_is_retried_with_backoff_and_rejected_channels_stay_pending() {
    let mut h = Harness::new(options(true));
    let a = h.subscribe("a", SubscribeOptions::new());
    let w = h.subscribe("w", SubscribeOptions::new().wait_for_auth(true));
    h.transmit("queued");
    h.open(None, unauthenticated());
    let (seq, _) = h.provider_call();
    h.events();
    let t1 = Instant::now();
    h.s.on_provider_result(
        t1,
        seq,
        Err(Box::new(std::io::Error::other("login service down"))),
    );
    // reauth_retry: 1000 ms + 0 (the drawn randomness) for the first failure.
    assert_eq!(h.failures(), [Some(Duration::from_millis(1000))]);
    let f = h.frames();
    assert_eq!(
        events_of(&f),
        ["#subscribe a", "queued"],
        "what was held goes out; the waitForAuth channel stays pending"
    );
    assert_eq!(
        h.reauth(),
        Reauth::Backoff {
            reason: ReauthReason::NoToken
        }
    );
    // The server rejects `a` (the client is unauthenticated): kept, not failed.
    h.reply_error(
        &f[0]["cid"],
        json!({"name": "UnauthorizedError", "message": "no"}),
    );
    assert_eq!(h.events(), Vec::<&str>::new(), "no subscribeFail");
    assert!(matches!(
        h.s.channels["a"].request,
        super::channels::ChannelRequest::AwaitingReauth
    ));
    assert_eq!(a.status.borrow().state, ChannelState::Pending);
    // No hammering: a removed token waits for the backoff delay too.
    h.text(json!({"event": "#removeAuthToken"}));
    assert!(
        !h.actions()
            .iter()
            .any(|a| matches!(a, Action::CallProvider { .. }))
    );
    h.s.on_text(t1, ""); // a ping keeps the ping deadline away
    h.frames();
    h.advance_to(t1 + Duration::from_millis(1000));
    let actions = h.actions();
    let [Action::CallProvider { seq, request }] = &actions[..] else {
        panic!("{actions:?}")
    };
    assert_eq!(request.reason, ReauthReason::NoToken);
    assert_eq!(request.failures, 1);
    assert_eq!(
        h.reauth().hold(),
        Hold::Subscriptions,
        "a retry holds subscriptions only"
    );
    h.s.on_provider_result(t1 + Duration::from_millis(1000), *seq, Ok("fresh".into()));
    let f = h.frames();
    assert_eq!(events_of(&f), ["#authenticate"]);
    h.reply(&f[0]["cid"], json!({"isAuthenticated": true}));
    assert_eq!(
        events_of(&h.frames()),
        ["#subscribe a", "#subscribe w"],
        "the kept channel and the waitForAuth one"
    );
    assert_eq!(w.status.borrow().state, ChannelState::Pending);
}

#[tokio::test(start_paused = true)]
async fn a_provider_that_hangs_past_its_timeout_is_cancelled_and_retried() {
    let mut o = options(true);
    o.ping_timeout_disabled = true;
    o.token_provider_timeout = Duration::from_secs(3);
    let mut h = Harness::new(o);
    let t0 = Instant::now();
    h.open(None, unauthenticated());
    let (seq, _) = h.provider_call();
    h.events();
    h.advance_to(t0 + Duration::from_secs(3));
    let actions = h.actions();
    assert!(
        matches!(actions[..], [Action::CancelProvider]),
        "{actions:?}"
    );
    assert_eq!(h.failures(), [Some(Duration::from_millis(1000))]);
    // Its late answer is ignored.
    h.s.on_provider_result(t0 + Duration::from_secs(4), seq, Ok("late".into()));
    assert!(h.frames().is_empty());
    h.advance_to(t0 + Duration::from_secs(4));
    let (seq2, _) = h.provider_call();
    assert_ne!(seq, seq2);
    // Each further failure waits longer (x2), up to the cap.
    h.advance_to(t0 + Duration::from_secs(7));
    h.actions();
    assert_eq!(h.failures(), [Some(Duration::from_millis(2000))]);
}

#[tokio::test(start_paused = true)]
async fn unsubscribing_the_only_channel_that_needed_a_token_ends_the_retries() {
    let mut h = Harness::new(options(true));
    h.open(Some("old"), authenticated());
    h.actions();
    let _p = h.subscribe("p", SubscribeOptions::new());
    let f = h.frames();
    h.reply_error(
        &f[0]["cid"],
        json!({"name": "AuthTokenExpiredError", "message": "jwt expired"}),
    );
    let (seq, reason) = h.provider_call();
    assert_eq!(reason, ReauthReason::SubscribeRejected("p".into()));
    h.command(Command::Unsubscribe {
        channel: "p".into(),
    });
    h.events();
    h.s.on_provider_result(
        Instant::now(),
        seq,
        Err(Box::new(std::io::Error::other("down"))),
    );
    assert_eq!(h.failures(), [None], "nothing needs a token any more");
    assert_eq!(h.reauth(), Reauth::Idle);
}

#[tokio::test(start_paused = true)]
async fn an_unanswered_authenticate_is_a_failed_attempt_retried_after_backoff() {
    let mut h = Harness::new(options(true));
    h.open(None, unauthenticated());
    let (seq, _) = h.provider_call();
    let t1 = Instant::now() + Duration::from_secs(1);
    h.s.on_provider_result(t1, seq, Ok("fresh".into()));
    h.frames();
    h.events();
    h.s.on_text(t1, ""); // a ping keeps the ping deadline away
    h.advance_to(t1 + Duration::from_secs(10));
    assert_eq!(h.failures(), [Some(Duration::from_millis(1000))]);
    assert_eq!(
        h.reauth(),
        Reauth::Backoff {
            reason: ReauthReason::NoToken
        }
    );
}

#[tokio::test(start_paused = true)]
async fn a_removed_token_holds_new_subscriptions_but_not_other_traffic() {
    let mut h = Harness::new(options(true));
    h.open(Some("old"), authenticated());
    h.frames();
    assert!(h.actions().is_empty(), "authenticated: no provider call");
    h.text(json!({"event": "#removeAuthToken"}));
    let actions = h.actions();
    assert!(matches!(actions[0], Action::RemoveToken { emit: true }));
    assert!(
        matches!(&actions[1], Action::CallProvider { request, .. } if request.reason == ReauthReason::Removed)
    );
    let seq = h.s.provider_seq;
    assert_eq!(
        h.reauth(),
        Reauth::Provider {
            seq,
            hold: Hold::Subscriptions,
            reason: ReauthReason::Removed
        }
    );
    let _b = h.subscribe("b", SubscribeOptions::new());
    h.transmit("now");
    assert_eq!(events_of(&h.frames()), ["now"]);
    h.s.on_provider_result(Instant::now(), seq, Ok("fresh".into()));
    let f = h.frames();
    h.reply(&f[0]["cid"], json!({"isAuthenticated": true}));
    assert_eq!(events_of(&h.frames()), ["#subscribe b"]);
}

#[tokio::test(start_paused = true)]
async fn a_refresh_before_exp_holds_nothing_until_the_server_removes_the_token() {
    let mut o = options(true);
    o.ping_timeout_disabled = true;
    let mut h = Harness::new(o);
    let token = jwt(json!({"iat": UNIX_NOW, "exp": UNIX_NOW + 100.0}));
    let t0 = Instant::now();
    h.open(Some(&token), authenticated());
    h.actions();
    // reauth_margin 30 s (less than a third of the 100 s lifetime): refresh at 70 s.
    assert_eq!(h.s.poll_timeout(), Some(t0 + Duration::from_secs(70)));
    h.advance_to(t0 + Duration::from_secs(70));
    let (seq, reason) = h.provider_call();
    assert_eq!(reason, ReauthReason::Expiring);
    assert_eq!(
        h.reauth(),
        Reauth::Provider {
            seq,
            hold: Hold::Nothing,
            reason: ReauthReason::Expiring
        }
    );
    let _c = h.subscribe("c", SubscribeOptions::new());
    assert_eq!(events_of(&h.frames()), ["#subscribe c"]);
    // The server removes the token meanwhile: the same call now holds subscriptions.
    h.text(json!({"event": "#removeAuthToken"}));
    assert!(
        !h.actions()
            .iter()
            .any(|a| matches!(a, Action::CallProvider { .. })),
        "no second provider call"
    );
    assert_eq!(
        h.reauth(),
        Reauth::Provider {
            seq,
            hold: Hold::Subscriptions,
            reason: ReauthReason::Expiring
        }
    );
    let _d = h.subscribe("d", SubscribeOptions::new());
    assert!(h.frames().is_empty());
}

#[tokio::test(start_paused = true)]
async fn an_auth_rejected_subscription_stays_pending_through_reauthentications() {
    let mut h = Harness::new(options(true));
    h.open(Some("old"), authenticated());
    h.actions();
    let p = h.subscribe("p", SubscribeOptions::new());
    let f = h.frames();
    let expired = json!({"name": "AuthTokenExpiredError", "message": "jwt expired"});
    h.reply_error(&f[0]["cid"], expired.clone());
    let (seq, reason) = h.provider_call();
    assert_eq!(reason, ReauthReason::SubscribeRejected("p".into()));
    assert_eq!(p.status.borrow().state, ChannelState::Pending, "kept");
    h.s.on_provider_result(Instant::now(), seq, Ok("fresh".into()));
    let f = h.frames();
    h.events();
    h.reply(&f[0]["cid"], json!({"isAuthenticated": true}));
    let f = h.frames();
    assert_eq!(events_of(&f), ["#subscribe p"], "the one retry");
    assert!(matches!(&h.actions()[..], [Action::SaveToken(_)]));
    // Rejected for an auth reason again: that attempt did not help. The channel stays
    // pending and the next attempt waits for the backoff delay.
    let t1 = Instant::now();
    h.reply_error(&f[0]["cid"], expired);
    assert!(h.actions().is_empty(), "no immediate provider call");
    assert_eq!(h.failures(), [Some(Duration::from_millis(1000))]);
    assert_eq!(p.status.borrow().state, ChannelState::Pending);
    h.s.on_text(t1, "");
    h.frames();
    h.advance_to(t1 + Duration::from_millis(1000));
    let (seq, reason) = h.provider_call();
    assert_eq!(reason, ReauthReason::SubscribeRejected("p".into()));
    h.s.on_provider_result(t1 + Duration::from_millis(1000), seq, Ok("fresher".into()));
    let f = h.frames();
    h.reply(&f[0]["cid"], json!({"isAuthenticated": true}));
    let f = h.frames();
    assert_eq!(events_of(&f), ["#subscribe p"]);
    h.reply(&f[0]["cid"], json!(null));
    assert_eq!(p.status.borrow().state, ChannelState::Subscribed);
    assert_eq!(
        h.s.reauth_backoff.attempts(),
        0,
        "a confirmation resets the backoff"
    );
    // A rejection that is not about auth stays final, as in the JS client.
    h.command(Command::Unsubscribe {
        channel: "p".into(),
    });
    let q = h.subscribe("q", SubscribeOptions::new());
    let f = h.frames();
    let f = f.last().cloned().unwrap_or_default();
    h.events();
    h.reply_error(
        &f["cid"],
        json!({"name": "ForbiddenError", "message": "no"}),
    );
    assert!(h.events().contains(&"subscribeFail"));
    let status = q.status.borrow().clone();
    assert_eq!(status.state, ChannelState::Unsubscribed);
    assert!(matches!(status.ended, Some(SubscribeError::Rejected(_))));
}

#[tokio::test(start_paused = true)]
async fn without_a_provider_a_rejection_is_final_like_the_js_client() {
    let mut h = Harness::new(options(false));
    h.open(None, unauthenticated());
    let p = h.subscribe("p", SubscribeOptions::new());
    let f = h.frames();
    h.events();
    h.reply_error(&f[0]["cid"], json!({"name": "NopeError", "message": "no"}));
    assert_eq!(h.events(), ["subscribeFail"]);
    assert!(h.actions().is_empty());
    assert_eq!(p.status.borrow().state, ChannelState::Unsubscribed);
}

#[tokio::test(start_paused = true)]
async fn closing_while_the_provider_runs_cancels_it_and_ignores_its_late_answer() {
    let mut h = Harness::new(options(true));
    h.open(None, unauthenticated());
    let (seq, _) = h.provider_call();
    h.s.on_socket_closed(Instant::now(), CloseFrame::Code(4000, String::new()));
    let actions = h.actions();
    assert!(matches!(actions[0], Action::CancelProvider), "{actions:?}");
    assert!(matches!(actions[1], Action::CloseSocket { .. }));
    assert_eq!(h.reauth(), Reauth::Idle, "no phase without a connection");
    h.s.on_provider_result(Instant::now(), seq, Ok("late".into()));
    assert!(h.frames().is_empty());
    assert!(h.actions().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_token_change_the_store_could_not_record_is_what_the_next_handshake_uses() {
    let failed = || Err(crate::TokenStoreError(std::io::Error::other("read-only")));
    let reconnect = |h: &mut Harness| {
        h.s.on_socket_closed(Instant::now(), CloseFrame::Code(4000, String::new()));
        h.actions();
        h.command(Command::Connect { done: None });
        assert!(matches!(h.actions()[..], [Action::Dial]));
        assert!(h.s.on_socket_open(Instant::now()));
        (h.actions(), h.frames())
    };
    let mut h = Harness::new(options(false));
    let old = jwt(json!({"v": 1}));
    let new = jwt(json!({"v": 2}));
    h.open(Some(&old), authenticated());
    h.actions();
    // The server replaces the token; the store cannot save it.
    h.text(json!({"event": "#setAuthToken", "data": {"token": new}}));
    assert!(
        h.actions()
            .iter()
            .any(|a| matches!(a, Action::SaveToken(t) if *t == new))
    );
    h.s.on_token_saved(failed());
    // The next handshake sends the new token, not the store's old one, and the save is
    // tried again.
    let (actions, hs) = reconnect(&mut h);
    assert!(
        matches!(&actions[..], [Action::SaveToken(t)] if *t == new),
        "{actions:?}"
    );
    assert_eq!(hs[0]["event"], "#handshake");
    assert_eq!(hs[0]["data"]["authToken"], json!(new));
    h.reply(&hs[0]["cid"], authenticated());
    h.s.on_token_saved(Ok(()));
    // Now the server removes the token and the store cannot delete it: the next
    // handshake sends none (the removal is not undone by the stale file).
    h.text(json!({"event": "#removeAuthToken"}));
    assert!(
        h.actions()
            .iter()
            .any(|a| matches!(a, Action::RemoveToken { .. }))
    );
    h.s.on_token_removed(true, failed().map(|()| None));
    let (actions, hs) = reconnect(&mut h);
    assert!(
        matches!(&actions[..], [Action::RemoveToken { emit: false }]),
        "{actions:?}"
    );
    assert_eq!(hs[0]["data"]["authToken"], Value::Null);
    h.reply(&hs[0]["cid"], unauthenticated());
    h.s.on_token_removed(false, Ok(Some(new.clone())));
    // The store is up to date again: the handshake after that reads it.
    let (actions, hs) = reconnect(&mut h);
    assert!(matches!(actions[..], [Action::LoadToken]), "{actions:?}");
    assert!(hs.is_empty());
}

// ---------------------------------------------------------------- recovery (14.16)

fn positioned(channel: &str, n: u64, epoch: &str) -> Value {
    json!({"event": "#publish", "data": {"channel": channel, "data": n, "offset": n, "epoch": epoch}})
}

fn recoveries(h: &mut Harness) -> Vec<crate::channel::Recovery> {
    h.take_events()
        .into_iter()
        .filter_map(|e| match e {
            Event::Recovery { outcome, .. } => Some(outcome),
            _ => None,
        })
        .collect()
}

/// Offsets delivered to the subscription's queue so far.
fn delivered(c: &mut ChannelHandle) -> Vec<u64> {
    let mut v = Vec::new();
    let waker = futures_util::task::noop_waker();
    let mut cx = std::task::Context::from_waker(&waker);
    while let std::task::Poll::Ready(Some(m)) = c._queue.poll_recv(&mut cx) {
        v.push(m.offset().expect("an offset"));
    }
    v
}

#[tokio::test(start_paused = true)]
async fn a_resubscription_carries_the_position_reached_and_reports_the_recovery() {
    let mut h = Harness::new(options(false));
    let mut c = h.subscribe("chat", SubscribeOptions::new());
    h.open(None, unauthenticated());
    let f = h.frames();
    assert_eq!(
        f[0]["data"],
        json!({"channel": "chat"}),
        "nothing to recover yet"
    );
    h.reply(&f[0]["cid"], json!({"epoch": "E1", "offset": 4}));
    h.text(positioned("chat", 5, "E1"));
    h.text(positioned("chat", 6, "E1"));
    assert_eq!(delivered(&mut c), [5, 6]);
    h.s.on_socket_closed(Instant::now(), CloseFrame::Code(4000, String::new()));
    h.actions();
    h.open(None, unauthenticated());
    let f = h.frames();
    assert_eq!(
        f[0]["data"],
        json!({"channel": "chat", "recover": {"epoch": "E1", "offset": 6}})
    );
    // The replay, then the reply.
    for n in 7..=9 {
        h.text(positioned("chat", n, "E1"));
    }
    h.take_events();
    h.reply(
        &f[0]["cid"],
        json!({"epoch": "E1", "offset": 9, "recovered": true}),
    );
    assert_eq!(
        recoveries(&mut h),
        [crate::channel::Recovery::Recovered { publications: 3 }]
    );
    assert_eq!(delivered(&mut c), [7, 8, 9]);
    assert!(matches!(
        c.status.borrow().last_recovery,
        Some(crate::channel::Recovery::Recovered { publications: 3 })
    ));
}

#[tokio::test(start_paused = true)]
async fn duplicates_are_dropped_and_a_jump_asks_again_from_where_the_client_is() {
    let mut h = Harness::new(options(false));
    let mut c = h.subscribe("chat", SubscribeOptions::new());
    h.open(None, unauthenticated());
    let f = h.frames();
    h.reply(&f[0]["cid"], json!({"epoch": "E1", "offset": 0}));
    h.text(positioned("chat", 1, "E1"));
    h.text(positioned("chat", 1, "E1"));
    assert_eq!(delivered(&mut c), [1], "a duplicate is dropped");
    h.text(positioned("chat", 4, "E1"));
    assert!(
        delivered(&mut c).is_empty(),
        "after a gap: dropped until recovered"
    );
    let f = h.frames();
    assert_eq!(events_of(&f), ["#subscribe chat"]);
    assert_eq!(f[0]["data"]["recover"], json!({"epoch": "E1", "offset": 1}));
    // Live ones still arriving before the reply, past the gap: dropped (the replay has
    // them); the replay itself is accepted.
    h.text(positioned("chat", 5, "E1"));
    for n in 2..=5 {
        h.text(positioned("chat", n, "E1"));
    }
    h.reply(
        &f[0]["cid"],
        json!({"epoch": "E1", "offset": 5, "recovered": true}),
    );
    assert_eq!(delivered(&mut c), [2, 3, 4, 5]);
    assert!(h.frames().is_empty(), "no further request");
    assert_eq!(c.status.borrow().state, ChannelState::Subscribed);
}

#[tokio::test(start_paused = true)]
async fn a_refused_recovery_or_a_new_epoch_is_reported_never_silent() {
    let mut h = Harness::new(options(false));
    let mut c = h.subscribe(
        "chat",
        SubscribeOptions::new().recover_from(StreamPosition::new("OLD", 10)),
    );
    h.open(None, unauthenticated());
    let f = h.frames();
    assert_eq!(
        f[0]["data"]["recover"],
        json!({"epoch": "OLD", "offset": 10})
    );
    h.take_events();
    h.reply(
        &f[0]["cid"],
        json!({"epoch": "NEW", "offset": 3, "recovered": false, "reason": "epoch"}),
    );
    assert_eq!(
        recoveries(&mut h),
        [crate::channel::Recovery::NotRecovered {
            reason: NotRecovered::EpochChanged
        }]
    );
    // The new stream already holds 3 publications this client never saw: it asks for
    // them (from offset 0 of the new epoch); a live one meanwhile waits for the replay.
    let f = h.frames();
    assert_eq!(events_of(&f), ["#subscribe chat"]);
    assert_eq!(
        f[0]["data"]["recover"],
        json!({"epoch": "NEW", "offset": 0})
    );
    h.text(positioned("chat", 4, "NEW"));
    assert!(delivered(&mut c).is_empty());
    for n in 1..=4 {
        h.text(positioned("chat", n, "NEW"));
    }
    h.reply(
        &f[0]["cid"],
        json!({"epoch": "NEW", "offset": 4, "recovered": true}),
    );
    assert_eq!(
        delivered(&mut c),
        [1, 2, 3, 4],
        "the new stream from its start"
    );
    assert_eq!(
        recoveries(&mut h),
        [crate::channel::Recovery::Recovered { publications: 4 }]
    );
    // The live stream restarts (another epoch): reported, and followed.
    h.text(positioned("chat", 1, "NEWER"));
    assert_eq!(
        recoveries(&mut h),
        [crate::channel::Recovery::NotRecovered {
            reason: NotRecovered::EpochChanged
        }]
    );
    assert_eq!(delivered(&mut c), [1]);
}

#[tokio::test(start_paused = true)]
async fn a_restarted_stream_missed_from_its_start_is_recovered_from_its_start() {
    let mut h = Harness::new(options(false));
    let mut c = h.subscribe("chat", SubscribeOptions::new());
    h.open(None, unauthenticated());
    let f = h.frames();
    h.reply(&f[0]["cid"], json!({"epoch": "E1", "offset": 0}));
    h.text(positioned("chat", 1, "E1"));
    assert_eq!(delivered(&mut c), [1]);
    h.take_events();
    // The backplane restarted empty; the first publication this subscriber sees of the
    // new stream is its third: the two before it were published before this client's
    // server subscribed again.
    h.text(positioned("chat", 3, "E2"));
    assert_eq!(
        recoveries(&mut h),
        [crate::channel::Recovery::NotRecovered {
            reason: NotRecovered::EpochChanged
        }],
        "the old stream's loss is reported"
    );
    assert!(delivered(&mut c).is_empty(), "held back for the replay");
    let f = h.frames();
    assert_eq!(events_of(&f), ["#subscribe chat"]);
    assert_eq!(f[0]["data"]["recover"], json!({"epoch": "E2", "offset": 0}));
    for n in 1..=3 {
        h.text(positioned("chat", n, "E2"));
    }
    h.reply(
        &f[0]["cid"],
        json!({"epoch": "E2", "offset": 3, "recovered": true}),
    );
    assert_eq!(
        delivered(&mut c),
        [1, 2, 3],
        "the new stream from its start"
    );
    assert_eq!(
        recoveries(&mut h),
        [crate::channel::Recovery::Recovered { publications: 3 }]
    );
    h.text(positioned("chat", 4, "E2"));
    assert_eq!(delivered(&mut c), [4]);
    assert!(h.frames().is_empty(), "no further request");
}

#[tokio::test(start_paused = true)]
async fn a_stream_that_restarts_again_is_not_asked_for_a_third_time() {
    let mut h = Harness::new(options(false));
    let mut c = h.subscribe(
        "chat",
        SubscribeOptions::new().recover_from(StreamPosition::new("OLD", 10)),
    );
    h.open(None, unauthenticated());
    let f = h.frames();
    h.reply(
        &f[0]["cid"],
        json!({"epoch": "NEW", "offset": 3, "recovered": false, "reason": "epoch"}),
    );
    let f = h.frames();
    assert_eq!(
        f[0]["data"]["recover"],
        json!({"epoch": "NEW", "offset": 0})
    );
    // Restarted once more before the answer: reported, and followed from there.
    h.reply(
        &f[0]["cid"],
        json!({"epoch": "NEWER", "offset": 2, "recovered": false, "reason": "epoch"}),
    );
    assert!(h.frames().is_empty(), "no third request");
    let reasons: Vec<_> = recoveries(&mut h);
    assert_eq!(
        reasons,
        [crate::channel::Recovery::NotRecovered {
            reason: NotRecovered::EpochChanged
        }; 2]
    );
    h.text(positioned("chat", 3, "NEWER"));
    assert_eq!(delivered(&mut c), [3]);
}

#[tokio::test(start_paused = true)]
async fn channels_without_history_are_untouched() {
    let mut h = Harness::new(options(false));
    let mut c = h.subscribe("news", SubscribeOptions::new());
    h.open(None, unauthenticated());
    let f = h.frames();
    h.reply(&f[0]["cid"], Value::Null);
    h.text(json!({"event": "#publish", "data": {"channel": "news", "data": 1}}));
    h.text(json!({"event": "#publish", "data": {"channel": "news", "data": 1}}));
    let waker = futures_util::task::noop_waker();
    let mut cx = std::task::Context::from_waker(&waker);
    let mut n = 0;
    while let std::task::Poll::Ready(Some(m)) = c._queue.poll_recv(&mut cx) {
        assert_eq!(m.offset(), None);
        n += 1;
    }
    assert_eq!(n, 2, "no deduplication without positions");
    h.s.on_socket_closed(Instant::now(), CloseFrame::Code(4000, String::new()));
    h.actions();
    h.open(None, unauthenticated());
    assert_eq!(h.frames()[0]["data"], json!({"channel": "news"}));
}

// ------------------------------------------------------------ clock faults
// The token's `exp` is wall-clock time; the refresh deadline is a monotonic instant.
// A client clock that is wrong when the deadline is computed follows the token's
// lifetime (the server just accepted it, so its clock is within `iat..exp`); a jump
// after that does not move the deadline (docs/RELIABILITY.md, *Faults*).

fn refresh_after_open(unix_now: fn() -> f64, claims: Value) -> Option<Duration> {
    let mut o = options(true);
    o.ping_timeout_disabled = true;
    let mut h = Harness::new(o);
    h.s.unix_now = unix_now;
    let t0 = Instant::now();
    h.open(Some(&jwt(claims)), authenticated());
    h.actions();
    h.s.poll_timeout().map(|at| at - t0)
}

#[tokio::test(start_paused = true)]
async fn a_client_clock_an_hour_ahead_refreshes_at_the_tokens_lifetime_not_in_a_loop() {
    let claims = json!({"iat": UNIX_NOW, "exp": UNIX_NOW + 100.0});
    // Before: exp - margin - now < 0, a refresh at once, and again after every new token.
    assert_eq!(
        refresh_after_open(|| UNIX_NOW + 3600.0, claims),
        Some(Duration::from_secs(70))
    );
}

#[tokio::test(start_paused = true)]
async fn a_client_clock_an_hour_behind_refreshes_before_exp_not_an_hour_late() {
    let claims = json!({"iat": UNIX_NOW, "exp": UNIX_NOW + 100.0});
    assert_eq!(
        refresh_after_open(|| UNIX_NOW - 3600.0, claims),
        Some(Duration::from_secs(70))
    );
}

#[tokio::test(start_paused = true)]
async fn a_correct_clock_still_uses_the_time_left() {
    // A token issued 50 s ago (clock within iat..exp): refresh 20 s from now.
    let claims = json!({"iat": UNIX_NOW - 50.0, "exp": UNIX_NOW + 50.0});
    // exp - margin (30 s) - now.
    assert_eq!(
        refresh_after_open(|| UNIX_NOW, claims),
        Some(Duration::from_secs(20))
    );
}

#[tokio::test(start_paused = true)]
async fn a_clock_past_exp_without_iat_schedules_no_refresh_loop() {
    let claims = json!({"exp": UNIX_NOW + 100.0});
    assert_eq!(refresh_after_open(|| UNIX_NOW + 3600.0, claims), None);
}

#[tokio::test(start_paused = true)]
async fn a_wall_clock_jump_after_scheduling_does_not_move_the_refresh() {
    let mut o = options(true);
    o.ping_timeout_disabled = true;
    let mut h = Harness::new(o);
    let t0 = Instant::now();
    h.open(
        Some(&jwt(json!({"iat": UNIX_NOW, "exp": UNIX_NOW + 100.0}))),
        authenticated(),
    );
    h.actions();
    assert_eq!(h.s.poll_timeout(), Some(t0 + Duration::from_secs(70)));
    // The wall clock jumps a day forward, then an hour back: nothing fires early.
    h.s.unix_now = || UNIX_NOW + 86_400.0;
    h.advance_to(t0 + Duration::from_secs(30));
    assert!(h.actions().is_empty(), "no refresh at 30 s");
    h.s.unix_now = || UNIX_NOW - 3600.0;
    h.advance_to(t0 + Duration::from_secs(69));
    assert!(h.actions().is_empty(), "no refresh at 69 s");
    assert_eq!(h.s.poll_timeout(), Some(t0 + Duration::from_secs(70)));
    h.advance_to(t0 + Duration::from_secs(70));
    let (_, reason) = h.provider_call();
    assert_eq!(reason, ReauthReason::Expiring);
}
