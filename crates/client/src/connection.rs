//! The connection task: the driver of the [`Session`] state machine. It owns the
//! WebSocket, the dial in progress, the token-provider call and the one timer, feeds
//! what happens to the session, and performs what the session asks ([`Action`]s and
//! frames). Every rule lives in the session; this file only moves bytes, timers and
//! futures. No lock is held across an `.await`.

use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::CloseFrame as WsCloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;

use crate::auth::{BoxError, BoxFuture};
use crate::command::{Command, CommandReceiver};
use crate::connector::{Dialer, WsStream};
use crate::events::EventHub;
use crate::options::ClientOptions;
use crate::session::{Action, CloseFrame, Session};

type WsResult = Option<Result<WsMessage, tokio_tungstenite::tungstenite::Error>>;

enum Wake {
    Cmd(Option<Command>),
    Ws(WsResult),
    Dialed(Result<Box<WsStream>, String>),
    Provider(u64, Result<String, BoxError>),
    Timer,
}

enum StoreOp {
    Save(String),
    Remove { emit: bool },
}

/// At most this many further ready commands and inbound messages are handled after the
/// one that woke the connection task, before its frames are flushed.
const DRAIN_BUDGET: usize = 256;

pub(crate) struct Connection {
    session: Session,
    opts: Arc<ClientOptions>,
    dialer: Dialer,
    cmd_rx: CommandReceiver,
    hub: EventHub,
    sink: Option<SplitSink<WsStream, WsMessage>>,
    stream: Option<SplitStream<WsStream>>,
    dial: Option<BoxFuture<'static, Result<WsStream, String>>>,
    provider: Option<(u64, JoinHandle<Result<String, BoxError>>)>,
    store_ops: Vec<StoreOp>,
}

async fn next_ws(stream: &mut Option<SplitStream<WsStream>>) -> WsResult {
    match stream {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

async fn poll_dial(
    dial: &mut Option<BoxFuture<'static, Result<WsStream, String>>>,
) -> Result<WsStream, String> {
    match dial {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

async fn poll_provider(
    provider: &mut Option<(u64, JoinHandle<Result<String, BoxError>>)>,
) -> (u64, Result<String, BoxError>) {
    match provider {
        Some((seq, h)) => {
            let r = match h.await {
                Ok(r) => r,
                Err(e) => Err(Box::new(std::io::Error::other(format!(
                    "token provider panicked or was cancelled: {e}"
                ))) as BoxError),
            };
            (*seq, r)
        }
        None => std::future::pending().await,
    }
}

/// Write what is left and the close frame, then close, in the background (at most 5 s).
fn spawn_closer(
    mut sink: SplitSink<WsStream, WsMessage>,
    leftover: Vec<String>,
    frame: CloseFrame,
) {
    tokio::spawn(async move {
        let work = async {
            for f in leftover {
                sink.feed(WsMessage::Text(f.into())).await?;
            }
            let close = match frame {
                CloseFrame::None => None,
                CloseFrame::Empty => Some(None),
                CloseFrame::Code(code, reason) => Some(Some(WsCloseFrame {
                    code: WsCloseCode::from(code),
                    reason: reason.into(),
                })),
            };
            if let Some(close) = close {
                sink.feed(WsMessage::Close(close)).await?;
            }
            sink.flush().await?;
            sink.close().await
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), work).await;
    });
}

impl Connection {
    pub(crate) fn new(
        opts: Arc<ClientOptions>,
        session: Session,
        dialer: Dialer,
        cmd_rx: CommandReceiver,
        hub: EventHub,
    ) -> Connection {
        Connection {
            session,
            opts,
            dialer,
            cmd_rx,
            hub,
            sink: None,
            stream: None,
            dial: None,
            provider: None,
            store_ops: Vec::new(),
        }
    }

    pub(crate) async fn run(mut self) {
        self.session.start(Instant::now());
        self.perform().await;
        // One timer for the task's whole life (creating and dropping a `Sleep` per
        // iteration takes the timer wheel's lock twice). `armed` is the instant it is
        // set to, `None` once it has fired (or before it is first set). It is re-armed
        // only when the next deadline is earlier than `armed`; a later deadline leaves it
        // armed, so it may fire early once: `on_timer` then finds nothing due and the
        // next iteration re-arms it for the real deadline.
        let mut timer = Box::pin(tokio::time::sleep_until(Instant::now()));
        let mut armed: Option<Instant> = None;
        loop {
            if let Some(deadline) = self.session.poll_timeout()
                && armed.is_none_or(|a| deadline < a)
            {
                timer.as_mut().reset(deadline);
                armed = Some(deadline);
            }
            let wake = tokio::select! {
                c = self.cmd_rx.recv() => Wake::Cmd(c),
                m = next_ws(&mut self.stream) => Wake::Ws(m),
                d = poll_dial(&mut self.dial) => Wake::Dialed(d.map(Box::new)),
                (seq, r) = poll_provider(&mut self.provider) => Wake::Provider(seq, r),
                () = timer.as_mut(), if armed.is_some() => Wake::Timer,
            };
            if matches!(wake, Wake::Timer) {
                armed = None;
            }
            self.on_wake(wake).await;
            self.drain_ready().await;
            self.flush_out().await;
            self.run_store_ops().await;
            if self.session.is_terminated() {
                break;
            }
        }
        self.flush_out().await;
        self.run_store_ops().await;
        self.hub.close();
        self.cmd_rx.close();
        for w in self.session.take_close_waiters() {
            let _ = w.send(());
        }
        tracing::debug!("connection task finished");
    }

    async fn on_wake(&mut self, wake: Wake) {
        let now = Instant::now();
        match wake {
            Wake::Cmd(Some(c)) => self.session.on_command(now, c),
            Wake::Cmd(None) => {
                tracing::debug!("every handle was dropped; closing the client");
                self.session.terminate(now);
            }
            Wake::Ws(m) => self.on_ws(now, m),
            Wake::Dialed(r) => {
                self.dial = None;
                match r {
                    Ok(ws) => {
                        if self.session.on_socket_open(now) {
                            let (sink, stream) = (*ws).split();
                            self.sink = Some(sink);
                            self.stream = Some(stream);
                        }
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, url = self.dialer.url(), "WebSocket connection failed");
                        self.session.on_dial_failed(now, e);
                    }
                }
            }
            Wake::Provider(seq, r) => {
                self.provider = None;
                self.session.on_provider_result(now, seq, r);
            }
            Wake::Timer => self.session.on_timer(now),
        }
        self.perform().await;
    }

    fn on_ws(&mut self, now: Instant, m: WsResult) {
        match m {
            Some(Ok(WsMessage::Text(t))) => self.session.on_text(now, t.as_str()),
            Some(Ok(WsMessage::Binary(b))) => self.session.on_binary(&b),
            Some(Ok(WsMessage::Close(frame))) => {
                let frame = match frame {
                    Some(f) => CloseFrame::Code(u16::from(f.code), f.reason.as_str().to_owned()),
                    None => CloseFrame::Empty,
                };
                self.session.on_socket_closed(now, frame);
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                tracing::debug!(error = %e, "WebSocket error");
                self.session.on_socket_closed(now, CloseFrame::None);
            }
            None => self.session.on_socket_closed(now, CloseFrame::None),
        }
    }

    /// Do what the session asked, in order.
    async fn perform(&mut self) {
        while let Some(action) = self.session.outputs().actions.pop_front() {
            match action {
                Action::Dial => self.dial = Some(Box::pin(self.dialer.clone().dial())),
                Action::LoadToken => {
                    let loaded = self.opts.token_store.load().await;
                    self.session.on_token_loaded(Instant::now(), loaded);
                }
                Action::CloseSocket { leftover, frame } => {
                    self.dial = None;
                    self.stream = None;
                    if let Some(sink) = self.sink.take() {
                        spawn_closer(sink, leftover, frame);
                    }
                }
                Action::SaveToken(t) => self.store_ops.push(StoreOp::Save(t)),
                Action::RemoveToken { emit } => self.store_ops.push(StoreOp::Remove { emit }),
                Action::CallProvider { seq, request } => {
                    if let Some(provider) = self.opts.token_provider.clone() {
                        self.provider = Some((seq, tokio::spawn(provider.token(request))));
                    }
                }
                Action::CancelProvider => {
                    if let Some((_, h)) = self.provider.take() {
                        h.abort();
                    }
                }
            }
        }
    }

    /// Handle up to [`DRAIN_BUDGET`] further commands and inbound messages that are ready
    /// right now (alternating between the two; each source in its own order), so that
    /// their frames go out with one flush. Stops before anything that must be awaited
    /// between two items: pending token-store operations, or the end of the task. A
    /// closed command channel is left to the next `select!`. Before an item that closes
    /// the connection (a close/disconnect/reconnect command, an inbound close frame,
    /// error or end of stream), the frames written so far are flushed by this task, as
    /// they were before batching (the close itself hands only later frames to the
    /// background task that writes the close frame, which may not finish if the
    /// process exits right after `Client::close`).
    async fn drain_ready(&mut self) {
        let mut budget = DRAIN_BUDGET;
        let mut cmds_open = true;
        while budget > 0 {
            let mut progressed = false;
            if cmds_open && self.can_drain() {
                match self.cmd_rx.try_recv() {
                    Ok(c) => {
                        if c.closes_connection() {
                            self.flush_out().await;
                        }
                        self.session.on_command(Instant::now(), c);
                        self.perform().await;
                        budget -= 1;
                        progressed = true;
                    }
                    Err(_) => cmds_open = false,
                }
            }
            if budget > 0
                && self.can_drain()
                && let Some(stream) = self.stream.as_mut()
                && let Some(m) = stream.next().now_or_never()
            {
                if !matches!(m, Some(Ok(WsMessage::Text(_) | WsMessage::Binary(_)))) {
                    self.flush_out().await;
                }
                self.on_ws(Instant::now(), m);
                self.perform().await;
                budget -= 1;
                progressed = true;
            }
            if !progressed {
                break;
            }
        }
    }

    fn can_drain(&self) -> bool {
        !self.session.is_terminated() && self.store_ops.is_empty()
    }

    async fn flush_out(&mut self) {
        let out = self.session.outputs();
        if out.frames.is_empty() {
            return;
        }
        let frames = std::mem::take(&mut out.frames);
        if let Some(sink) = self.sink.as_mut() {
            for f in frames {
                if let Err(e) = sink.feed(WsMessage::Text(f.into())).await {
                    tracing::debug!(error = %e, "write failed");
                    return;
                }
            }
            if let Err(e) = sink.flush().await {
                tracing::debug!(error = %e, "flush failed");
            }
        }
    }

    async fn run_store_ops(&mut self) {
        if self.store_ops.is_empty() {
            return;
        }
        let ops = std::mem::take(&mut self.store_ops);
        let store = self.opts.token_store.clone();
        for op in ops {
            match op {
                StoreOp::Save(t) => {
                    let r = store.save(t).await;
                    self.session.on_token_saved(r);
                }
                StoreOp::Remove { emit } => {
                    let r = store.remove().await;
                    self.session.on_token_removed(emit, r);
                }
            }
        }
        self.perform().await;
    }
}
