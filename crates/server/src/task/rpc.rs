//! Invokes and transmitted events from the client: inbound middleware, then the socket's own streams or the server-wide handlers.

use std::panic::AssertUnwindSafe;
use std::task::{Context, Poll, Waker};

use socketcluster_rs_protocol::{Cid, ErrorObject, RawValue, WireError};
use tokio::sync::mpsc;

use crate::config::UnhandledProcedure;
use crate::middleware::InboundKind;
use crate::rpc::{HandlerFuture, ReceivedEvent, Request};

use super::SocketTask;
use super::step::{After, Gate, Resume, gate, inbound_action};

impl SocketTask {
    pub(super) fn on_app_event(
        &mut self,
        event: String,
        cid: Option<Cid>,
        data: Option<Box<RawValue>>,
        expired: Option<ErrorObject>,
    ) {
        let kind = match cid {
            Some(_) => InboundKind::Invoke { procedure: event },
            None => InboundKind::Transmit { receiver: event },
        };
        let socket = &self.socket;
        match gate(
            &self.server.middleware.inbound,
            cid,
            (kind, data, expired),
            |_, (kind, data, expired)| inbound_action(socket, kind, data, expired),
            |cid, result| Resume::Inbound {
                after: After::App { cid },
                result,
            },
        ) {
            Gate::Open((cid, (kind, data, _))) => self.dispatch(kind, cid, data),
            Gate::Step(step) => self.start_step(step),
        }
    }

    pub(super) fn dispatch(
        &mut self,
        kind: InboundKind,
        cid: Option<Cid>,
        data: Option<Box<RawValue>>,
    ) {
        match (kind, cid) {
            (InboundKind::Invoke { procedure }, Some(cid)) => {
                // A socket's own stream first (JS `socket.procedure(name)`). A full one
                // drops the request, like the server-wide streams.
                if let Some(tx) = self.shared.procedure_stream(&procedure) {
                    let req = Request::new(self.socket.clone(), procedure, data, cid);
                    match tx.try_send(req) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(req)) => {
                            tracing::warn!(socket = %self.shared.id, procedure = %req.procedure(), "socket procedure stream full; request dropped");
                        }
                        // The stream went away meanwhile: the server-wide handler.
                        Err(mpsc::error::TrySendError::Closed(req)) => {
                            if let Some(h) = self
                                .server
                                .handlers
                                .procedure(req.procedure())
                                .or_else(|| self.server.handlers.fallback())
                            {
                                run_handler(h.call(req));
                            }
                        }
                    }
                    return;
                }
                match self.server.handlers.procedure(&procedure) {
                    Some(h) => {
                        let req = Request::new(self.socket.clone(), procedure, data, cid);
                        run_handler(h.call(req));
                    }
                    None => {
                        if let Some(h) = self.server.handlers.fallback() {
                            let req = Request::new(self.socket.clone(), procedure, data, cid);
                            run_handler(h.call(req));
                        } else if self.server.config.unhandled_procedure
                            == UnhandledProcedure::Error
                        {
                            let e = ErrorObject::new(
                                "UnhandledProcedureError",
                                format!("No handler for procedure {procedure}"),
                            );
                            self.reply_err(cid, &WireError::Object(e));
                        }
                    }
                }
            }
            (InboundKind::Transmit { receiver }, _) => {
                if self
                    .shared
                    .offer_event(&self.socket, &receiver, data.as_deref())
                {
                    return;
                }
                if let Some(h) = self.server.handlers.receiver(&receiver) {
                    let ev = ReceivedEvent::new(self.socket.clone(), receiver, data);
                    run_handler(h.call(ev));
                }
            }
            _ => {}
        }
    }
}

/// Run a handler: poll it once right here, in the socket task, and spawn it only if it
/// has to wait. A handler that answers synchronously (the common case) costs no task,
/// no scheduling and no cross-task wakeup, and the answers to every request read in one
/// batch leave in one flush. A handler that awaits still runs concurrently with the
/// socket (the spawned task polls it again with its own waker). A panic in the first
/// poll is contained like a panic in a spawned task: logged, the request dropped.
fn run_handler(mut fut: HandlerFuture) {
    let mut cx = Context::from_waker(Waker::noop());
    match std::panic::catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(&mut cx))) {
        Ok(Poll::Ready(())) => {}
        Ok(Poll::Pending) => {
            tokio::spawn(fut);
        }
        Err(_) => tracing::error!("a procedure or receiver handler panicked"),
    }
}
