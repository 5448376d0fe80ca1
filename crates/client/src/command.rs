//! What the [`Client`](crate::Client) handles ask of the connection task, and the bounded
//! channel that carries it.
//!
//! # Capacity
//!
//! At most [`ClientOptions::command_capacity`](crate::ClientOptions::command_capacity)
//! commands that carry application data (transmits, invokes, publishes, subscriptions,
//! `authenticate`, answers to server invokes) wait in the channel at any time. When it is
//! full, an `async` call (`invoke`, `publish`, `subscribe`, `authenticate`) waits for room;
//! a synchronous call (`transmit`, `transmit_publish`, `Request::respond`) fails at once
//! with a `Full` error and sends nothing. Commands without data (disconnect, unsubscribe,
//! dropping a subscription, ...) are never refused, so that dropping a handle always takes
//! effect; there can be no more of them than the handles and calls that issued them. All
//! commands keep the order in which they were issued.

use std::sync::Arc;
use std::time::Duration;

use serde_json::value::RawValue;
use socketcluster_rs_protocol::{Cid, CloseCode, WireError};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};

use crate::auth::AuthStatus;
use crate::channel::{ChannelLink, ChannelStatus, Message, SubscribeOptions};
use crate::error::{ConnectError, InvokeError, RespondError};
use crate::rpc::{Handler, HandlerLink};

pub(crate) type RawData = Option<Box<RawValue>>;
pub(crate) type InvokeReply = oneshot::Sender<Result<RawData, InvokeError>>;
pub(crate) type AuthReply = oneshot::Sender<Result<AuthStatus, InvokeError>>;

/// One request from a handle to the connection task.
pub(crate) enum Command {
    Connect {
        done: Option<oneshot::Sender<Result<(), ConnectError>>>,
    },
    Disconnect {
        code: CloseCode,
        reason: Option<String>,
    },
    Reconnect {
        code: CloseCode,
        reason: Option<String>,
    },
    Close {
        done: oneshot::Sender<()>,
    },
    Transmit {
        event: String,
        data: RawData,
    },
    Invoke {
        event: String,
        data: RawData,
        timeout: Option<Duration>,
        reply: InvokeReply,
    },
    Subscribe {
        channel: String,
        options: SubscribeOptions,
        consumer_id: u64,
        tx: crate::queue::Sender<Message>,
        reply: oneshot::Sender<watch::Receiver<ChannelStatus>>,
    },
    DropConsumer {
        channel: String,
        id: u64,
    },
    Unsubscribe {
        channel: String,
    },
    ProcessPending,
    Authenticate {
        token: String,
        reply: AuthReply,
    },
    Deauthenticate {
        done: oneshot::Sender<()>,
    },
    AddHandler {
        name: String,
        id: u64,
        handler: Handler,
    },
    DropHandler {
        name: String,
        id: u64,
    },
    Respond {
        generation: u64,
        cid: Cid,
        response: Result<RawData, WireError>,
    },
    StartBatching,
    StopBatching,
    CancelBatching,
}

impl Command {
    /// Whether the command carries application data and so counts against the capacity.
    fn is_metered(&self) -> bool {
        matches!(
            self,
            Command::Transmit { .. }
                | Command::Invoke { .. }
                | Command::Subscribe { .. }
                | Command::Authenticate { .. }
                | Command::Respond { .. }
        )
    }

    /// Whether the command ends the current connection (its frames written so far are
    /// flushed first).
    pub(crate) fn closes_connection(&self) -> bool {
        matches!(
            self,
            Command::Close { .. } | Command::Disconnect { .. } | Command::Reconnect { .. }
        )
    }
}

/// A command on its way, with whether it holds one unit of capacity.
pub(crate) struct Envelope {
    cmd: Command,
    metered: bool,
}

/// Why a command could not be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SendError {
    /// `command_capacity` data-carrying commands are already waiting.
    Full,
    /// The connection task has ended.
    Closed,
}

/// The sending side, held by [`Client`](crate::Client) and by every stream and request
/// handle that talks back to the task.
#[derive(Clone)]
pub(crate) struct CommandSender {
    tx: mpsc::UnboundedSender<Envelope>,
    room: Arc<Semaphore>,
}

/// The receiving side, owned by the connection task.
pub(crate) struct CommandReceiver {
    rx: mpsc::UnboundedReceiver<Envelope>,
    room: Arc<Semaphore>,
}

/// A sender that does not keep the task alive (the task ends when every handle is gone).
#[derive(Clone)]
pub(crate) struct WeakCommandSender {
    tx: mpsc::WeakUnboundedSender<Envelope>,
    room: Arc<Semaphore>,
}

impl std::fmt::Debug for WeakCommandSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WeakCommandSender").finish_non_exhaustive()
    }
}

/// A command channel holding at most `capacity` data-carrying commands (at least 1).
pub(crate) fn channel(capacity: usize) -> (CommandSender, CommandReceiver) {
    let (tx, rx) = mpsc::unbounded_channel();
    let room = Arc::new(Semaphore::new(capacity.clamp(1, Semaphore::MAX_PERMITS)));
    (
        CommandSender {
            tx,
            room: room.clone(),
        },
        CommandReceiver { rx, room },
    )
}

impl CommandSender {
    /// Send now: a data-carrying command fails with [`SendError::Full`] when there is no
    /// room; other commands are always accepted while the task runs.
    pub(crate) fn try_send(&self, cmd: Command) -> Result<(), SendError> {
        let metered = cmd.is_metered();
        if metered {
            match self.room.try_acquire() {
                Ok(permit) => permit.forget(),
                Err(_) if self.tx.is_closed() => return Err(SendError::Closed),
                Err(_) => return Err(SendError::Full),
            }
        }
        self.push(Envelope { cmd, metered })
    }

    /// Send, waiting for room when a data-carrying command finds the channel full.
    pub(crate) async fn send(&self, cmd: Command) -> Result<(), SendError> {
        let metered = cmd.is_metered();
        if metered {
            match self.room.try_acquire() {
                Ok(permit) => permit.forget(),
                Err(_) => tokio::select! {
                    permit = self.room.acquire() => match permit {
                        Ok(p) => p.forget(),
                        Err(_) => return Err(SendError::Closed),
                    },
                    () = self.tx.closed() => return Err(SendError::Closed),
                },
            }
        }
        self.push(Envelope { cmd, metered })
    }

    fn push(&self, envelope: Envelope) -> Result<(), SendError> {
        let metered = envelope.metered;
        self.tx.send(envelope).map_err(|_| {
            if metered {
                self.room.add_permits(1);
            }
            SendError::Closed
        })
    }

    pub(crate) fn downgrade(&self) -> WeakCommandSender {
        WeakCommandSender {
            tx: self.tx.downgrade(),
            room: self.room.clone(),
        }
    }
}

impl WeakCommandSender {
    pub(crate) fn upgrade(&self) -> Option<CommandSender> {
        Some(CommandSender {
            tx: self.tx.upgrade()?,
            room: self.room.clone(),
        })
    }
}

impl CommandReceiver {
    fn open(&self, envelope: Envelope) -> Command {
        if envelope.metered {
            self.room.add_permits(1);
        }
        envelope.cmd
    }

    /// The next command; `None` once every sender is gone.
    pub(crate) async fn recv(&mut self) -> Option<Command> {
        let e = self.rx.recv().await?;
        Some(self.open(e))
    }

    /// A command that is ready now, if any (`Err` also when every sender is gone).
    pub(crate) fn try_recv(&mut self) -> Result<Command, mpsc::error::TryRecvError> {
        let e = self.rx.try_recv()?;
        Ok(self.open(e))
    }

    /// Stop accepting commands: senders waiting for room fail with `Closed`.
    pub(crate) fn close(&mut self) {
        self.room.close();
        self.rx.close();
    }
}

impl ChannelLink for CommandSender {
    fn unsubscribe(&self, channel: &str) {
        let _ = self.try_send(Command::Unsubscribe {
            channel: channel.to_owned(),
        });
    }

    fn drop_consumer(&self, channel: &str, id: u64) {
        let _ = self.try_send(Command::DropConsumer {
            channel: channel.to_owned(),
            id,
        });
    }
}

impl HandlerLink for CommandSender {
    fn drop_handler(&self, name: &str, id: u64) {
        let _ = self.try_send(Command::DropHandler {
            name: name.to_owned(),
            id,
        });
    }

    fn respond(
        &self,
        generation: u64,
        cid: Cid,
        response: Result<RawData, WireError>,
    ) -> Result<(), RespondError> {
        self.try_send(Command::Respond {
            generation,
            cid,
            response,
        })
        .map_err(|e| match e {
            SendError::Full => RespondError::Full,
            SendError::Closed => RespondError::Closed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transmit() -> Command {
        Command::Transmit {
            event: "e".into(),
            data: None,
        }
    }

    #[tokio::test]
    async fn data_commands_are_refused_when_full_but_control_commands_pass_in_order() {
        let (tx, mut rx) = channel(2);
        tx.try_send(transmit()).unwrap();
        tx.try_send(transmit()).unwrap();
        assert_eq!(tx.try_send(transmit()).err(), Some(SendError::Full));
        // Control commands are never refused and keep their place in the order.
        tx.try_send(Command::ProcessPending).unwrap();
        assert!(matches!(rx.recv().await, Some(Command::Transmit { .. })));
        // Receiving one frees one unit of room.
        tx.try_send(transmit()).unwrap();
        assert!(matches!(rx.recv().await, Some(Command::Transmit { .. })));
        assert!(matches!(rx.recv().await, Some(Command::ProcessPending)));
        assert!(matches!(rx.recv().await, Some(Command::Transmit { .. })));
    }

    #[tokio::test(start_paused = true)]
    async fn an_async_send_waits_for_room_and_fails_when_the_task_ends() {
        let (tx, mut rx) = channel(1);
        tx.send(transmit()).await.unwrap();
        let tx2 = tx.clone();
        let waiting = tokio::spawn(async move { tx2.send(transmit()).await });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!waiting.is_finished(), "no room yet: the send waits");
        assert!(rx.recv().await.is_some());
        assert_eq!(waiting.await.unwrap(), Ok(()));
        // Full again; the task stops: the waiting sender is told.
        let tx3 = tx.clone();
        let waiting = tokio::spawn(async move { tx3.send(transmit()).await });
        tokio::task::yield_now().await;
        rx.close();
        assert_eq!(waiting.await.unwrap(), Err(SendError::Closed));
        assert_eq!(tx.try_send(Command::ProcessPending), Err(SendError::Closed));
    }
}
