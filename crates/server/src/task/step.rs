//! Steps: processing that has to wait (middleware, a remote broker) without blocking
//! the socket task.
//!
//! Work that needs to wait becomes a *step* future stored in the task; while it is
//! pending the task keeps serving timers, commands and reading ahead, but processes no
//! further inbound message. A step that completes at once (synchronous middleware, the
//! local broker) is resumed at once. Its [`Resume`] value says how processing goes on.
//!
//! Every middleware-gated action goes through [`gate`]: when no middleware of the kind
//! is registered (the common case) the caller continues directly with its own values,
//! without building the middleware action and without allocating or boxing anything;
//! otherwise the chain runs as a step.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use futures_util::FutureExt;
use socketcluster_rs_protocol::{Cid, ErrorObject, RawValue, WireError};

use crate::auth::{Claims, VerifyOutcome};
use crate::broker::{BrokerError, BrokerFuture};
use crate::history::{HistoryRead, StreamPosition};
use crate::middleware::{
    Block, HandshakeAction, HandshakeMiddleware, InboundAction, InboundKind, InboundMiddleware,
    InboundRawAction, InboundRawMiddleware, run_handshake, run_inbound, run_inbound_raw, snapshot,
};
use crate::socket::Socket;

use super::SocketTask;
use super::output::error_object;

/// A boxed step future ending in `R`.
pub(super) type Step<R> = Pin<Box<dyn Future<Output = R> + Send + 'static>>;

/// The socket task's step: it ends in how processing resumes.
pub(super) type StepFuture = Step<Resume>;

/// A kind of middleware, and how its chain runs over its action.
pub(super) trait Chain: Send + Sync + 'static {
    /// What the chain runs over.
    type Action: Send + 'static;
    /// What the chain ends in.
    type Output: Send + 'static;
    /// Run `chain` over `action`, in registration order.
    fn run(
        chain: Arc<[Arc<Self>]>,
        action: Self::Action,
    ) -> impl Future<Output = Self::Output> + Send + 'static;
}

impl Chain for dyn HandshakeMiddleware {
    type Action = HandshakeAction;
    type Output = Result<(), Block>;
    fn run(
        chain: Arc<[Arc<Self>]>,
        action: HandshakeAction,
    ) -> impl Future<Output = Self::Output> + Send + 'static {
        run_handshake(chain, action)
    }
}

impl Chain for dyn InboundMiddleware {
    type Action = InboundAction;
    type Output = Result<InboundAction, Block>;
    fn run(
        chain: Arc<[Arc<Self>]>,
        action: InboundAction,
    ) -> impl Future<Output = Self::Output> + Send + 'static {
        run_inbound(chain, action)
    }
}

impl Chain for dyn InboundRawMiddleware {
    type Action = InboundRawAction;
    type Output = Result<InboundRawAction, Block>;
    fn run(
        chain: Arc<[Arc<Self>]>,
        action: InboundRawAction,
    ) -> impl Future<Output = Self::Output> + Send + 'static {
        run_inbound_raw(chain, action)
    }
}

/// The action inbound middleware sees.
pub(super) fn inbound_action(
    socket: &Socket,
    kind: InboundKind,
    data: Option<Box<RawValue>>,
    expired: Option<ErrorObject>,
) -> InboundAction {
    InboundAction {
        socket: socket.clone(),
        kind,
        data,
        auth_token_expired_error: expired,
    }
}

/// The kind of the `authenticate` action of a verified token.
pub(super) fn authenticate_kind(signed: String, claims: Arc<Claims>) -> InboundKind {
    InboundKind::Authenticate {
        signed_auth_token: signed,
        auth_token: claims,
    }
}

/// How a gated action goes on.
pub(super) enum Gate<T, R> {
    /// No middleware of the kind is registered: the caller goes on with its values.
    Open(T),
    /// The chain runs in this step, which ends in the continuation.
    Step(Step<R>),
}

/// The one way an action goes through middleware.
///
/// `keep` is what the continuation needs besides the chain's result, `payload` what the
/// middleware action is made of (by `into_action`, which also sees `keep`). When the
/// chain is empty both are handed straight back ([`Gate::Open`]): no action is built,
/// nothing is allocated or boxed, and the caller continues with a direct call.
/// Otherwise the chain (as registered now) runs over the action in a step that ends in
/// `resume(keep, output)`.
#[inline]
pub(super) fn gate<C, K, P, R>(
    chain: &RwLock<Arc<[Arc<C>]>>,
    keep: K,
    payload: P,
    into_action: impl FnOnce(&K, P) -> C::Action,
    resume: impl FnOnce(K, C::Output) -> R + Send + 'static,
) -> Gate<(K, P), R>
where
    C: Chain + ?Sized,
    K: Send + 'static,
{
    let chain = snapshot(chain);
    if chain.is_empty() {
        return Gate::Open((keep, payload));
    }
    let action = into_action(&keep, payload);
    let run = C::run(chain, action);
    Gate::Step(Box::pin(async move { resume(keep, run.await) }))
}

/// Where an inbound action continues once inbound middleware has run over it.
pub(super) enum After {
    /// The `#handshake`'s token is valid (action `authenticate`).
    HandshakeAuth {
        cid: Cid,
        rehandshake: bool,
        was_auth: bool,
    },
    /// `#authenticate` with a valid token.
    Authenticate { cid: Cid, was_auth: bool },
    /// A client `#publish` (action `publishIn`) to `channel`.
    Publish { cid: Option<Cid>, channel: String },
    /// `#subscribe` to `channel`, from position `recover` if the client sent one.
    Subscribe {
        cid: Cid,
        channel: String,
        recover: Option<StreamPosition>,
    },
    /// An invoke or a transmitted event.
    App { cid: Option<Cid> },
}

/// Continuation of a step.
pub(super) enum Resume {
    /// `handshakeSC` middleware ran.
    Handshake {
        cid: Cid,
        outcome: VerifyOutcome,
        result: Result<(), Block>,
    },
    /// Inbound middleware ran.
    Inbound {
        after: After,
        result: Result<InboundAction, Block>,
    },
    /// `inboundRaw` middleware ran.
    Raw {
        result: Result<InboundRawAction, Block>,
    },
    /// The broker took a client publication.
    Published {
        cid: Option<Cid>,
        result: Result<(), BrokerError>,
    },
    /// The broker subscribed a channel's first local subscriber.
    Subscribed {
        cid: Cid,
        channel: String,
        recover: Option<StreamPosition>,
        result: Result<(), BrokerError>,
    },
    /// The broker read the history of a channel being subscribed.
    History {
        cid: Cid,
        channel: String,
        recover: Option<StreamPosition>,
        result: Result<HistoryRead, BrokerError>,
    },
    /// The broker unsubscribed a channel's last local subscriber.
    Unsubscribed {
        cid: Option<Cid>,
        channel: String,
        result: Result<(), BrokerError>,
    },
}

/// Completes with the pending step's continuation (never while there is no step).
pub(super) struct StepPoll<'a>(pub(super) &'a mut Option<StepFuture>);

impl Future for StepPoll<'_> {
    type Output = Resume;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Resume> {
        match self.0.as_mut() {
            Some(f) => f.as_mut().poll(cx),
            None => Poll::Pending,
        }
    }
}

impl SocketTask {
    /// Inbound middleware allowed an action: go on where `after` says, with the action
    /// as the middleware left it.
    fn inbound_allowed(&mut self, after: After, action: InboundAction) {
        match after {
            After::HandshakeAuth {
                cid,
                rehandshake,
                was_auth,
            } => self.complete_handshake(cid, None, rehandshake, was_auth),
            After::Authenticate { cid, was_auth } => self.authenticated(cid, was_auth),
            After::Publish { cid, channel } => self.publish(cid, &channel, action.data),
            After::Subscribe {
                cid,
                channel,
                recover,
            } => self.subscribe(cid, channel, recover),
            After::App { cid } => self.dispatch(action.kind, cid, action.data),
        }
    }

    /// An inbound action was blocked by middleware.
    fn inbound_blocked(&mut self, after: After, block: Block) {
        let (cid, action_name) = match after {
            After::Authenticate { cid, was_auth } => {
                return self.authenticate_blocked(cid, was_auth, block);
            }
            After::HandshakeAuth {
                cid,
                rehandshake,
                was_auth,
            } => {
                self.clear_auth_quietly();
                let auth_error = error_object(block.into_wire("authenticate", "inbound"));
                return self.complete_handshake(cid, Some(auth_error), rehandshake, was_auth);
            }
            After::Publish { cid, .. } => (cid, "publishIn"),
            After::Subscribe { cid, .. } => (Some(cid), "subscribe"),
            After::App { cid } => {
                let action_name = if cid.is_some() { "invoke" } else { "transmit" };
                (cid, action_name)
            }
        };
        let e = block.into_wire(action_name, "inbound");
        self.warn_wire(&e);
        if let Some(cid) = cid {
            self.reply_err(cid, &e);
        }
    }

    /// Resume at once when the step is already complete, else keep it pending.
    pub(super) fn start_step(&mut self, mut fut: StepFuture) {
        match (&mut fut).now_or_never() {
            Some(r) => self.resume(r),
            None => self.step = Some(fut),
        }
    }

    /// A broker operation as a step (the broker's own future, continued by `k`).
    pub(super) fn broker_step(
        &mut self,
        mut fut: BrokerFuture,
        k: impl FnOnce(Result<(), BrokerError>) -> Resume + Send + 'static,
    ) {
        match (&mut fut).now_or_never() {
            Some(r) => self.resume(k(r)),
            None => self.step = Some(Box::pin(async move { k(fut.await) })),
        }
    }

    /// A step is complete: continue (nothing once the socket is closing).
    pub(super) fn resume(&mut self, r: Resume) {
        if self.closing.is_some() {
            return;
        }
        match r {
            Resume::Handshake {
                cid,
                outcome,
                result,
            } => self.handshake_middleware_done(cid, outcome, result),
            Resume::Inbound { after, result } => match result {
                Ok(action) => self.inbound_allowed(after, action),
                Err(block) => self.inbound_blocked(after, block),
            },
            Resume::Raw { result } => self.inbound_raw_done(result),
            Resume::Published { cid, result } => {
                if let Some(cid) = cid {
                    match result {
                        Ok(()) => self.reply_ok(cid, None),
                        Err(e) => self.reply_err(
                            cid,
                            &WireError::Object(ErrorObject::new("BrokerError", e.0)),
                        ),
                    }
                }
            }
            Resume::Subscribed {
                cid,
                channel,
                recover,
                result,
            } => self.subscribed(cid, channel, recover, result),
            Resume::History {
                cid,
                channel,
                recover,
                result,
            } => self.history_read(cid, channel, recover, result),
            Resume::Unsubscribed {
                cid,
                channel,
                result,
            } => self.unsubscribed(cid, channel, result),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::middleware::push;

    /// A test middleware kind: each middleware adds its number to the action.
    struct Add(u32);

    impl Chain for Add {
        type Action = u32;
        type Output = Result<u32, Block>;
        async fn run(chain: Arc<[Arc<Self>]>, mut action: u32) -> Self::Output {
            for m in chain.iter() {
                // Middleware may wait.
                tokio::task::yield_now().await;
                if m.0 == 0 {
                    return Err(Block::Silent);
                }
                action += m.0;
            }
            Ok(action)
        }
    }

    fn chain(adds: &[u32]) -> RwLock<Arc<[Arc<Add>]>> {
        let lock = RwLock::new(Arc::from(Vec::<Arc<Add>>::new()));
        for &n in adds {
            push(&lock, Arc::new(Add(n)));
        }
        lock
    }

    #[test]
    fn without_middleware_everything_comes_back_and_no_action_is_built() {
        let gated = gate(
            &chain(&[]),
            "keep",
            7u32,
            |_, _| -> u32 { panic!("no action without middleware") },
            |_, _| -> &'static str { panic!("no step without middleware") },
        );
        assert!(matches!(gated, Gate::Open(("keep", 7))));
    }

    #[tokio::test]
    async fn the_chain_runs_over_the_action_then_resumes_with_keep_and_result() {
        let mut built = 0;
        let gated = gate(
            &chain(&[1, 10]),
            String::from("ctx"),
            5u32,
            |keep, payload| {
                built += 1;
                assert_eq!(keep, "ctx");
                payload * 100
            },
            |keep, result| format!("{keep}: {:?}", result.ok()),
        );
        assert_eq!(built, 1);
        let Gate::Step(step) = gated else {
            panic!("middleware is registered: expected a step")
        };
        assert_eq!(step.await, "ctx: Some(511)");
    }

    #[tokio::test]
    async fn a_block_reaches_the_continuation_and_the_chain_is_the_one_at_gating() {
        let lock = chain(&[1, 0, 5]);
        let Gate::Step(blocked) = gate(&lock, (), 1u32, |_, p| p, |(), r| r.is_err()) else {
            panic!("expected a step")
        };
        assert!(blocked.await, "the second middleware blocks");

        let lock = chain(&[2]);
        let Gate::Step(step) = gate(&lock, (), 1u32, |_, p| p, |(), r| r.ok()) else {
            panic!("expected a step")
        };
        // Middleware added after the action was gated does not run for it.
        push(&lock, Arc::new(Add(0)));
        assert_eq!(step.await, Some(3));
    }
}
