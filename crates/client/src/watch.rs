//! [`StateWatch`]: a value that changes over time (the connection state, a channel's
//! status), readable at any moment and awaitable for changes.

use std::fmt;

use tokio::sync::watch;

/// The current value of something the client tracks, plus a way to wait for changes
/// ([`Client::state_watch`](crate::Client::state_watch),
/// [`Subscription::status`](crate::Subscription::status)). Each `StateWatch` remembers
/// which value it has seen; clones start from the same point.
///
/// ```no_run
/// # async fn demo(client: socketcluster_rs_client::Client) {
/// use socketcluster_rs_client::ConnectionState;
/// let mut state = client.state_watch();
/// // Wait until the connection is open (or the client is gone).
/// let open = state.wait_for(|s| *s == ConnectionState::Open).await;
/// assert_eq!(open, Some(ConnectionState::Open));
/// # }
/// ```
pub struct StateWatch<T> {
    rx: watch::Receiver<T>,
}

impl<T> Clone for StateWatch<T> {
    fn clone(&self) -> Self {
        StateWatch {
            rx: self.rx.clone(),
        }
    }
}

impl<T: fmt::Debug> fmt::Debug for StateWatch<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("StateWatch")
            .field(&*self.rx.borrow())
            .finish()
    }
}

impl<T: Clone> StateWatch<T> {
    pub(crate) fn new(rx: watch::Receiver<T>) -> Self {
        StateWatch { rx }
    }

    /// The current value.
    pub fn get(&self) -> T {
        self.rx.borrow().clone()
    }

    /// The current value, marked as seen: [`changed`](Self::changed) then waits for a
    /// later one.
    pub fn latest(&mut self) -> T {
        self.rx.borrow_and_update().clone()
    }

    /// Wait for a value this watch has not seen yet and return it (marked as seen).
    /// `None` once the value can no longer change (the client was closed, or the
    /// channel left the table).
    pub async fn changed(&mut self) -> Option<T> {
        self.rx.changed().await.ok()?;
        Some(self.latest())
    }

    /// Wait until the value satisfies `f` (checking the current one first) and return
    /// it. `None` if the value can no longer change and never did.
    pub async fn wait_for(&mut self, mut f: impl FnMut(&T) -> bool) -> Option<T> {
        self.rx.wait_for(|v| f(v)).await.ok().map(|v| v.clone())
    }
}
