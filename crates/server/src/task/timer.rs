//! The task's timers: one-shot [`Timer`]s that hold no memory while disarmed, and the
//! optional periodic batch flush.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::time::{Instant, Interval, Sleep};

/// A one-shot timer that holds no memory while disarmed (an idle socket keeps only the
/// timers it needs).
#[derive(Default)]
pub(super) struct Timer(Option<Pin<Box<Sleep>>>);

impl Timer {
    pub(super) fn armed_at(at: Instant) -> Timer {
        Timer(Some(Box::pin(tokio::time::sleep_until(at))))
    }

    pub(super) fn arm(&mut self, at: Instant) {
        match &mut self.0 {
            Some(s) => s.as_mut().reset(at),
            None => *self = Timer::armed_at(at),
        }
    }

    pub(super) fn disarm(&mut self) {
        self.0 = None;
    }

    pub(super) fn is_armed(&self) -> bool {
        self.0.is_some()
    }

    /// Completes when the timer fires (never while disarmed), and disarms it.
    pub(super) fn fired(&mut self) -> TimerFired<'_> {
        TimerFired(self)
    }
}

pub(super) struct TimerFired<'a>(&'a mut Timer);

impl Future for TimerFired<'_> {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let Some(s) = self.0.0.as_mut() else {
            return Poll::Pending;
        };
        match s.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.0.disarm();
                Poll::Ready(())
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// The next tick of an optional interval (never while there is none).
pub(super) async fn tick_opt(tick: &mut Option<Interval>) {
    match tick {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn fires_once_at_its_deadline_then_is_disarmed() {
        let mut t = Timer::default();
        assert!(!t.is_armed());
        let start = Instant::now();
        t.arm(start + Duration::from_secs(5));
        assert!(t.is_armed());
        let early = tokio::time::timeout(Duration::from_secs(4), t.fired()).await;
        assert!(early.is_err(), "fired before its deadline");
        assert!(t.is_armed());
        t.fired().await;
        assert_eq!(Instant::now() - start, Duration::from_secs(5));
        assert!(!t.is_armed(), "a fired timer holds no sleep");
        // Disarmed, it never fires.
        let never = tokio::time::timeout(Duration::from_secs(3600), t.fired()).await;
        assert!(never.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn rearming_moves_the_deadline_and_disarming_cancels_it() {
        let start = Instant::now();
        let mut t = Timer::armed_at(start + Duration::from_secs(5));
        t.arm(start + Duration::from_secs(8));
        t.fired().await;
        assert_eq!(Instant::now() - start, Duration::from_secs(8));
        t.arm(Instant::now() + Duration::from_secs(1));
        t.disarm();
        let cancelled = tokio::time::timeout(Duration::from_secs(10), t.fired()).await;
        assert!(cancelled.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn no_interval_never_ticks() {
        let mut none: Option<Interval> = None;
        let ticked = tokio::time::timeout(Duration::from_secs(3600), tick_opt(&mut none)).await;
        assert!(ticked.is_err());
        let start = Instant::now();
        let period = Duration::from_millis(250);
        let mut some = Some(tokio::time::interval_at(start + period, period));
        tick_opt(&mut some).await;
        tick_opt(&mut some).await;
        assert_eq!(Instant::now() - start, 2 * period);
    }
}
