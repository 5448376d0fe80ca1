//! The round trip of a command between a broker handle and its connection task: the
//! handle sends the command with a [`Done`], the task answers through it, and the caller
//! awaits the [`Answer`] (boxed, the [`BrokerFuture`] of `subscribe`, `unsubscribe` or
//! `publish`).
//!
//! ```
//! # async fn demo() {
//! use socketcluster_rs_backplane::request::{self, Done};
//! use tokio::sync::mpsc;
//!
//! let (task, mut commands) = mpsc::unbounded_channel::<Done>();
//! tokio::spawn(async move {
//!     while let Some(done) = commands.recv().await {
//!         done.send(Ok(()));
//!     }
//! });
//! let answer = request::send("demo broker stopped", |done| {
//!     let _ = task.send(done);
//! });
//! assert!(answer.await.is_ok());
//! # }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use socketcluster_rs_server::broker::{BrokerError, BrokerFuture};
use tokio::sync::oneshot;

/// Where the connection task answers one command.
#[derive(Debug)]
pub struct Done(oneshot::Sender<Result<(), BrokerError>>);

impl Done {
    /// Answer the command (nothing happens if the caller stopped waiting).
    pub fn send(self, result: Result<(), BrokerError>) {
        let _ = self.0.send(result);
    }
}

/// The caller's side of a command: resolves with the connection task's answer, or with
/// `BrokerError(stopped)` when the command was dropped unanswered (the task is gone).
#[derive(Debug)]
#[must_use = "an Answer does nothing unless awaited"]
pub struct Answer {
    rx: oneshot::Receiver<Result<(), BrokerError>>,
    stopped: &'static str,
}

impl Answer {
    /// The task's answer, or `None` when the command was dropped unanswered.
    pub async fn reply(self) -> Option<Result<(), BrokerError>> {
        self.rx.await.ok()
    }
}

impl Future for Answer {
    type Output = Result<(), BrokerError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let stopped = self.stopped;
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.unwrap_or_else(|_| Err(BrokerError(stopped.to_owned()))))
    }
}

/// A new round trip: the [`Done`] travels with the command to the connection task, the
/// [`Answer`] stays with the caller. `stopped` is the error when the task is gone
/// (`"redis broker stopped"`).
pub fn pair(stopped: &'static str) -> (Done, Answer) {
    let (tx, rx) = oneshot::channel();
    (Done(tx), Answer { rx, stopped })
}

/// Send one command and wait for its answer: `send` hands the command, carrying the given
/// [`Done`], to the connection task. If the task is gone the command is dropped with its
/// `Done`, and the future resolves with `BrokerError(stopped)`.
pub fn send(stopped: &'static str, send: impl FnOnce(Done)) -> BrokerFuture {
    let (done, answer) = pair(stopped);
    send(done);
    Box::pin(answer)
}

/// A future that has already failed with `error`.
pub fn failed(error: BrokerError) -> BrokerFuture {
    Box::pin(std::future::ready(Err(error)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_answer_is_the_tasks_or_stopped_when_dropped() {
        let (done, answer) = pair("x stopped");
        done.send(Err(BrokerError("nope".to_owned())));
        assert_eq!(answer.await.unwrap_err().0, "nope");
        let (done, answer) = pair("x stopped");
        drop(done);
        assert_eq!(answer.await.unwrap_err().0, "x stopped");
        let (done, answer) = pair("x stopped");
        drop(done);
        assert!(answer.reply().await.is_none());
        assert!(send("x stopped", |done| done.send(Ok(()))).await.is_ok());
        assert_eq!(send("x stopped", drop).await.unwrap_err().0, "x stopped");
        assert!(failed(BrokerError("f".to_owned())).await.is_err());
    }
}
