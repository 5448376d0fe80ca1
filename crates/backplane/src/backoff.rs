//! Reconnect delays: exponential backoff with jitter.

use std::time::Duration;

/// `min · 2^exponent`, capped at `max` (the exponent is capped at 20).
pub fn backoff(min: Duration, max: Duration, exponent: u32) -> Duration {
    min.saturating_mul(2u32.saturating_pow(exponent.min(20)))
        .min(max)
}

/// `delay` with ±25 % uniform jitter, so that instances do not reconnect in lockstep.
pub fn jitter(delay: Duration) -> Duration {
    delay.mul_f64(0.75 + rand::random::<f64>() * 0.5)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let (min, max) = (Duration::from_millis(100), Duration::from_millis(1000));
        let d: Vec<u128> = (0..6).map(|a| backoff(min, max, a).as_millis()).collect();
        assert_eq!(d, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(backoff(min, max, u32::MAX), max);
        for _ in 0..100 {
            let j = jitter(Duration::from_millis(1000)).as_millis();
            assert!((750..=1250).contains(&j), "{j}");
        }
    }
}
