//! Opt-in busy polling ([`crate::ServerConfig::busy_poll`]): after inbound traffic, one
//! task keeps a runtime worker polling the I/O driver without sleeping, so the next
//! message is seen without waking a sleeping thread.
//!
//! Why: on an idle core a request first has to wake the thread parked in `epoll_wait`;
//! in the 2-core VM of docs/BENCHMARKS.md that wake-up is ~35 µs, twice the server's
//! whole work for a round trip. The spinner task only calls
//! [`tokio::task::yield_now`]: a worker with nothing else to run then polls the I/O
//! driver without blocking (`epoll_wait` with a zero timeout) before running it again.
//!
//! Cost: one core busy while traffic flows and for `window` after the last inbound
//! message; nothing while idle (the task then waits on a [`Notify`]).
//!
//! Life cycle: the task is spawned by the first [`BusyPoll::touch`] (always inside a
//! socket task, so inside the runtime), and ends when the server shuts down or is
//! dropped ([`BusyPoll::stop`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// No task yet: the next [`BusyPoll::touch`] spawns it.
const NOT_STARTED: u8 = 0;
/// The task is spinning.
const SPINNING: u8 = 1;
/// The task waits for the next [`BusyPoll::touch`].
const PARKED: u8 = 2;
/// The server is gone: the task ends, touches do nothing.
const STOPPED: u8 = 3;

struct Spin {
    window_us: u64,
    /// `last` is stored only when it is this much older than now (window / 8).
    granularity_us: u64,
    epoch: Instant,
    /// Microseconds since `epoch` of the last inbound message.
    last: AtomicU64,
    state: AtomicU8,
    wake: Notify,
}

impl Spin {
    fn now_us(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    fn recently_active(&self) -> bool {
        self.now_us()
            .saturating_sub(self.last.load(Ordering::SeqCst))
            < self.window_us
    }
}

/// The server's busy-poll state (one per server, owned by `ServerState`).
pub(crate) struct BusyPoll {
    spin: Arc<Spin>,
}

impl BusyPoll {
    pub(crate) fn new(window: Duration) -> Self {
        let window_us = u64::try_from(window.as_micros()).unwrap_or(u64::MAX);
        BusyPoll {
            spin: Arc::new(Spin {
                window_us,
                granularity_us: (window_us / 8).max(1),
                epoch: Instant::now(),
                last: AtomicU64::new(0),
                state: AtomicU8::new(NOT_STARTED),
                wake: Notify::new(),
            }),
        }
    }

    /// Record inbound traffic: keep spinning (or start again) for one more window.
    /// Called by socket tasks for every inbound message; the common case is one clock
    /// read and two loads.
    pub(crate) fn touch(&self) {
        let s = &self.spin;
        let now = s.now_us();
        // Store only when the time moved on by an eighth of the window: at high rates
        // the sockets' tasks on different cores would otherwise write the same cache
        // line for every message.
        if now.saturating_sub(s.last.load(Ordering::Relaxed)) >= s.granularity_us {
            s.last.store(now, Ordering::SeqCst);
        }
        match s.state.load(Ordering::SeqCst) {
            SPINNING | STOPPED => {}
            NOT_STARTED => {
                if s.state
                    .compare_exchange(NOT_STARTED, SPINNING, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
                {
                    tokio::spawn(spin(s.clone()));
                }
            }
            _ => {
                if s.state
                    .compare_exchange(PARKED, SPINNING, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
                {
                    s.wake.notify_one();
                }
            }
        }
    }

    /// End the task (server shut down or dropped); later touches do nothing.
    pub(crate) fn stop(&self) {
        self.spin.state.store(STOPPED, Ordering::SeqCst);
        self.spin.wake.notify_one();
    }

    /// Whether the task is waiting for traffic (tests).
    #[cfg(test)]
    fn is_parked(&self) -> bool {
        self.spin.state.load(Ordering::SeqCst) == PARKED
    }
}

impl Drop for BusyPoll {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn spin(s: Arc<Spin>) {
    tracing::debug!(window_us = s.window_us, "busy polling started");
    loop {
        match s.state.load(Ordering::SeqCst) {
            STOPPED => break,
            PARKED => {
                // Woken by a touch (state now SPINNING), by `stop`, or by a permit
                // left over from an earlier wake (still PARKED: wait again).
                s.wake.notified().await;
                continue;
            }
            _ => {}
        }
        if s.recently_active() {
            tokio::task::yield_now().await;
            continue;
        }
        // Idle for a whole window: park. A touch that saw SPINNING just before this
        // change has stored its time first, so the check below sees it (SeqCst on
        // both sides).
        if s.state
            .compare_exchange(SPINNING, PARKED, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
            && s.recently_active()
        {
            let _ = s
                .state
                .compare_exchange(PARKED, SPINNING, Ordering::SeqCst, Ordering::SeqCst);
        }
    }
    tracing::debug!("busy polling stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Wait (real time, generous deadline) until `cond` holds.
    async fn wait_until(what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn spins_after_traffic_parks_when_idle_and_ends_on_stop() {
        let bp = BusyPoll::new(Duration::from_millis(20));
        // Nothing runs before the first inbound message.
        assert_eq!(bp.spin.state.load(Ordering::Acquire), NOT_STARTED);
        bp.touch();
        assert_eq!(bp.spin.state.load(Ordering::Acquire), SPINNING);
        // One task: it holds the only other reference to the shared state.
        assert_eq!(Arc::strong_count(&bp.spin), 2);
        wait_until("the spinner to park after the window", || bp.is_parked()).await;
        // Traffic wakes it up again, without a second task.
        bp.touch();
        assert_eq!(bp.spin.state.load(Ordering::Acquire), SPINNING);
        assert_eq!(Arc::strong_count(&bp.spin), 2);
        wait_until("the spinner to park again", || bp.is_parked()).await;
        let spin = bp.spin.clone();
        drop(bp);
        wait_until("the task to end once the server is dropped", || {
            Arc::strong_count(&spin) == 1
        })
        .await;
        // Touching a stopped poller starts nothing.
        let stopped = BusyPoll { spin };
        stopped.touch();
        assert_eq!(stopped.spin.state.load(Ordering::Acquire), STOPPED);
        assert_eq!(Arc::strong_count(&stopped.spin), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stop_ends_a_spinning_task() {
        let bp = BusyPoll::new(Duration::from_secs(3600));
        bp.touch();
        assert_eq!(Arc::strong_count(&bp.spin), 2);
        bp.stop();
        wait_until("the spinning task to end", || {
            Arc::strong_count(&bp.spin) == 1
        })
        .await;
    }
}
