//! The bounded queue from the connection task to one consumer ([`Subscription`],
//! [`Receiver`], [`Procedure`]): one producer, one consumer, a `Mutex<VecDeque>` and the
//! consumer's waker.
//!
//! Replaces `tokio::sync::mpsc::channel`, whose semaphore, block list and atomic waker
//! were 14 % of the load generator's CPU at fan-out saturation (perf). Here a delivery
//! is one uncontended lock, a push, and a wake only when the consumer is waiting.
//! Memory: nothing while empty; a queue that grew in a burst gives its memory back once
//! drained.
//!
//! [`Subscription`]: crate::channel::Subscription
//! [`Receiver`]: crate::rpc::Receiver
//! [`Procedure`]: crate::rpc::Procedure

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

/// Capacity kept after a burst is drained; more is released.
const KEEP: usize = 16;

struct State<T> {
    items: VecDeque<T>,
    /// The consumer's waker while it waits on an empty queue.
    waker: Option<Waker>,
    sender_alive: bool,
    receiver_alive: bool,
}

struct Shared<T> {
    capacity: usize,
    state: Mutex<State<T>>,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // A panic while holding the lock cannot leave the queue inconsistent (every
        // critical section is a single push, pop or flag change).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A queue of at most `capacity` items (at least 1).
pub(crate) fn bounded<T>(capacity: usize) -> (Sender<T>, Queue<T>) {
    let shared = Arc::new(Shared {
        capacity: capacity.max(1),
        state: Mutex::new(State {
            items: VecDeque::new(),
            waker: None,
            sender_alive: true,
            receiver_alive: true,
        }),
    });
    (
        Sender {
            shared: shared.clone(),
        },
        Queue { shared },
    )
}

/// The producing side (held by the connection task).
pub(crate) struct Sender<T> {
    shared: Arc<Shared<T>>,
}

impl<T> std::fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender").finish_non_exhaustive()
    }
}

impl<T> Sender<T> {
    /// Queue `item`; gives it back when the queue is full or the consumer is gone.
    pub(crate) fn try_send(&self, item: T) -> Result<(), T> {
        let mut s = self.shared.lock();
        if !s.receiver_alive || s.items.len() >= self.shared.capacity {
            return Err(item);
        }
        s.items.push_back(item);
        let waker = s.waker.take();
        drop(s);
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let mut s = self.shared.lock();
        s.sender_alive = false;
        let waker = s.waker.take();
        drop(s);
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// The consuming side.
pub(crate) struct Queue<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Queue<T> {
    /// The next item; `None` once the queue is empty and the sender is gone.
    pub(crate) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut s = self.shared.lock();
        if let Some(item) = s.items.pop_front() {
            if s.items.is_empty() && s.items.capacity() > KEEP {
                s.items.shrink_to(KEEP);
            }
            return Poll::Ready(Some(item));
        }
        if !s.sender_alive {
            return Poll::Ready(None);
        }
        match &mut s.waker {
            Some(w) => w.clone_from(cx.waker()),
            None => s.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Wait for the next item (`None` once the sender is gone and nothing is left).
    pub(crate) async fn recv(&mut self) -> Option<T> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }
}

impl<T> Drop for Queue<T> {
    fn drop(&mut self) {
        let mut s = self.shared.lock();
        s.receiver_alive = false;
        let items = std::mem::take(&mut s.items);
        drop(s);
        drop(items); // outside the lock: items may hold anything
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    #[tokio::test]
    async fn delivers_in_order_refuses_beyond_capacity_and_ends_with_the_sender() {
        let (tx, mut rx) = bounded::<u32>(3);
        for i in 0..3 {
            assert!(tx.try_send(i).is_ok());
        }
        assert_eq!(tx.try_send(3), Err(3), "full");
        assert_eq!(rx.recv().await, Some(0));
        assert!(tx.try_send(4).is_ok(), "room again");
        assert_eq!(rx.recv().await, Some(1));
        assert_eq!(rx.recv().await, Some(2));
        assert_eq!(rx.recv().await, Some(4));
        assert!(rx.recv().now_or_never().is_none(), "empty: waits");
        drop(tx);
        assert_eq!(rx.recv().await, None);
    }

    #[tokio::test]
    async fn a_waiting_consumer_is_woken_by_a_send_and_by_the_senders_drop() {
        let (tx, mut rx) = bounded::<&'static str>(8);
        let consumer = tokio::spawn(async move {
            let first = rx.recv().await;
            let end = rx.recv().await;
            (first, end)
        });
        tokio::task::yield_now().await;
        assert!(tx.try_send("hello").is_ok());
        tokio::task::yield_now().await;
        drop(tx);
        assert_eq!(consumer.await.unwrap(), (Some("hello"), None));
    }

    #[test]
    fn a_dropped_consumer_refuses_items_and_frees_what_was_queued() {
        let (tx, rx) = bounded::<Arc<()>>(4);
        let item = Arc::new(());
        assert!(tx.try_send(item.clone()).is_ok());
        assert_eq!(Arc::strong_count(&item), 2);
        drop(rx);
        assert_eq!(Arc::strong_count(&item), 1, "queued item freed");
        assert!(tx.try_send(item.clone()).is_err());
    }

    #[tokio::test]
    async fn memory_of_a_burst_is_released_once_drained() {
        let (tx, mut rx) = bounded::<u64>(1024);
        for i in 0..1000 {
            assert!(tx.try_send(i).is_ok());
        }
        for i in 0..1000 {
            assert_eq!(rx.recv().await, Some(i));
        }
        assert!(rx.shared.lock().items.capacity() <= KEEP);
    }
}
