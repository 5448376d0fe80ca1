//! The JS client's reconnect-delay formula (docs/PROTOCOL.md 8.4), with injectable randomness.

use std::time::Duration;

use crate::close::{CloseCode, ReconnectAfterClose};

/// Auto-reconnect options. Defaults equal `socketcluster-client` 20's.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct ReconnectOptions {
    /// Base delay. JS default: 10000 ms.
    pub initial_delay: Duration,
    /// Up to this much is added at random to the base. JS default: 10000 ms.
    pub randomness: Duration,
    /// Growth factor per attempt. JS default: 1.5.
    pub multiplier: f64,
    /// Cap applied after the multiplication. JS default: 60000 ms.
    pub max_delay: Duration,
}

impl Default for ReconnectOptions {
    fn default() -> Self {
        ReconnectOptions {
            initial_delay: Duration::from_millis(10_000),
            randomness: Duration::from_millis(10_000),
            multiplier: 1.5,
            max_delay: Duration::from_millis(60_000),
        }
    }
}

impl ReconnectOptions {
    /// Options with the given values.
    pub fn new(
        initial_delay: Duration,
        randomness: Duration,
        multiplier: f64,
        max_delay: Duration,
    ) -> Self {
        ReconnectOptions {
            initial_delay,
            randomness,
            multiplier,
            max_delay,
        }
    }

    /// The delay for an attempt with this `exponent` (the number of attempts already made
    /// since the last successful handshake). `unit_random` is a uniform draw from [0, 1).
    ///
    /// ```text
    /// if immediate && exponent == 0: delay = 0
    /// else: base = round(initialDelay + randomness * U); delay = round(base * multiplier^exponent)
    /// delay = min(delay, maxDelay)
    /// ```
    pub fn delay(&self, exponent: u32, immediate: bool, unit_random: f64) -> Duration {
        let u = if unit_random.is_finite() {
            unit_random.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let max_ms = self.max_delay.as_millis() as f64;
        let ms = if immediate && exponent == 0 {
            0.0
        } else {
            let base = (self.initial_delay.as_millis() as f64
                + self.randomness.as_millis() as f64 * u)
                .round();
            let grown = (base * self.multiplier.powi(exponent.min(i32::MAX as u32) as i32)).round();
            if grown.is_finite() { grown } else { max_ms }
        };
        Duration::from_millis(ms.min(max_ms).max(0.0) as u64)
    }
}

/// The reconnect attempt counter and the formula, as the client keeps them.
#[derive(Clone, Debug, Default)]
pub struct Backoff {
    options: ReconnectOptions,
    attempts: u32,
}

impl Backoff {
    /// A counter at zero attempts.
    pub fn new(options: ReconnectOptions) -> Self {
        Backoff {
            options,
            attempts: 0,
        }
    }

    /// The options.
    pub fn options(&self) -> &ReconnectOptions {
        &self.options
    }

    /// Attempts made since the last successful handshake (`connectAttempts`).
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Reset after a successful handshake.
    pub fn reset(&mut self) {
        self.attempts = 0;
    }

    /// After a close with `code`: `None` if the client must not reconnect, else the delay
    /// before the next attempt (which counts as one more attempt).
    pub fn after_close(&mut self, code: CloseCode, unit_random: f64) -> Option<Duration> {
        let immediate = match code.reconnect() {
            ReconnectAfterClose::Never => return None,
            ReconnectAfterClose::Immediately => true,
            ReconnectAfterClose::WithBackoff => false,
        };
        Some(self.next_delay(immediate, unit_random))
    }

    /// The next delay; increments the attempt counter.
    pub fn next_delay(&mut self, immediate: bool, unit_random: f64) -> Duration {
        let exponent = self.attempts;
        self.attempts = self.attempts.saturating_add(1);
        self.options.delay(exponent, immediate, unit_random)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(d: Duration) -> u64 {
        d.as_millis() as u64
    }

    #[test]
    fn default_bands_match_protocol_8_4() {
        let o = ReconnectOptions::default();
        assert_eq!(ms(o.delay(0, false, 0.0)), 10_000);
        assert_eq!(ms(o.delay(0, false, 0.999_999)), 20_000);
        assert_eq!(ms(o.delay(1, false, 0.0)), 15_000);
        assert_eq!(ms(o.delay(1, false, 0.999_999)), 30_000);
        assert_eq!(ms(o.delay(2, false, 0.0)), 22_500);
        assert_eq!(ms(o.delay(3, false, 0.0)), 33_750);
        assert_eq!(ms(o.delay(3, false, 0.9)), 60_000);
        assert_eq!(ms(o.delay(5, false, 0.0)), 60_000);
        assert_eq!(ms(o.delay(500, false, 0.5)), 60_000);
    }

    #[test]
    fn immediate_codes_skip_only_the_first_delay() {
        let mut b = Backoff::default();
        assert_eq!(b.after_close(CloseCode(4000), 0.5), Some(Duration::ZERO));
        // the immediate attempt consumed exponent 0: next is in the 15-30 s band
        let d = ms(b.after_close(CloseCode(1006), 0.5).unwrap());
        assert!((15_000..=30_000).contains(&d), "{d}");
        b.reset();
        assert_eq!(b.after_close(CloseCode(1000), 0.5), None);
        assert_eq!(b.after_close(CloseCode(4501), 0.5), None);
        assert_eq!(b.attempts(), 0);
    }

    #[test]
    fn from_the_sixth_attempt_the_delay_is_the_cap() {
        let mut b = Backoff::default();
        for _ in 0..5 {
            b.next_delay(false, 0.0);
        }
        assert_eq!(ms(b.next_delay(false, 0.0)), 60_000);
    }
}
