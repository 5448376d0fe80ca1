//! The broker's [`BackplaneState`] as it changes: [`StateSender`] (kept by the broker)
//! and [`StateChanges`] (handed out by its `state_changes()`).

use tokio::sync::watch;

use crate::BackplaneState;

/// The current [`BackplaneState`] of a broker, shared by its handle and its tasks; each
/// change wakes the [`StateChanges`] made by [`StateSender::subscribe`].
#[derive(Debug)]
pub struct StateSender(watch::Sender<BackplaneState>);

impl StateSender {
    /// A state that starts as `initial`.
    pub fn new(initial: BackplaneState) -> StateSender {
        StateSender(watch::channel(initial).0)
    }

    /// The state now.
    pub fn get(&self) -> BackplaneState {
        *self.0.borrow()
    }

    /// Follow the changes from now on.
    pub fn subscribe(&self) -> StateChanges {
        StateChanges(self.0.subscribe())
    }

    /// Set the state; the watchers are woken only if it changed.
    pub fn set(&self, state: BackplaneState) {
        self.update(|s| {
            let changed = *s != state;
            *s = state;
            changed
        });
    }

    /// Change the state in place: `modify` runs while the watchers are locked out (so its
    /// side effects are done before any of them sees the new state) and returns whether it
    /// changed the state; only then are the watchers woken. Returns that value.
    pub fn update(&self, modify: impl FnOnce(&mut BackplaneState) -> bool) -> bool {
        self.0.send_if_modified(modify)
    }
}

/// Follows a broker's [`BackplaneState`] (from `RedisBroker::state_changes` or
/// `NatsBroker::state_changes`). Cheap to clone; each clone waits for changes on its own.
///
/// ```no_run
/// # async fn demo(mut changes: socketcluster_rs_backplane::StateChanges) {
/// use socketcluster_rs_backplane::BackplaneState;
///
/// tracing::info!(state = changes.current().as_str(), "backplane");
/// while let Some(state) = changes.changed().await {
///     if state != BackplaneState::Connected {
///         tracing::warn!(state = state.as_str(), "backplane");
///     }
/// }
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct StateChanges(watch::Receiver<BackplaneState>);

impl StateChanges {
    /// The state now.
    pub fn current(&self) -> BackplaneState {
        *self.0.borrow()
    }

    /// Wait for the next transition (after the last one this value returned, or after its
    /// creation) and return the new state; `None` once the broker is gone.
    pub async fn changed(&mut self) -> Option<BackplaneState> {
        self.0.changed().await.ok()?;
        Some(*self.0.borrow_and_update())
    }

    /// Wait until the state is `state` (at once if it already is). `false` if the broker
    /// went away first.
    pub async fn wait_for(&mut self, state: BackplaneState) -> bool {
        self.0.wait_for(|s| *s == state).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn changes_are_seen_once_and_the_end_is_none() {
        let sender = StateSender::new(BackplaneState::Disconnected);
        let mut changes = sender.subscribe();
        assert_eq!(changes.current(), BackplaneState::Disconnected);
        assert!(changes.wait_for(BackplaneState::Disconnected).await);
        sender.set(BackplaneState::Disconnected);
        sender.set(BackplaneState::Connected);
        assert_eq!(sender.get(), BackplaneState::Connected);
        assert_eq!(changes.changed().await, Some(BackplaneState::Connected));
        assert!(!sender.update(|_| false));
        let mut later = changes.clone();
        drop(sender);
        assert_eq!(changes.changed().await, None);
        assert!(later.wait_for(BackplaneState::Connected).await);
        assert!(!later.wait_for(BackplaneState::Degraded).await);
    }
}
