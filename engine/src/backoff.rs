//! The retry schedule: 1 s, 2 s, 4 s, 8 s, 16 s, then a 60 s cap, each with ±25 % jitter
//! drawn from a caller-supplied (seeded) RNG.
//!
//! `failures` counts failed attempts of one op: after the first failure the op waits about
//! 1 s, after the fifth about 16 s, after the sixth and later about 60 s. Being offline is
//! not a failure, so it never advances the schedule.

use rand::Rng;
use serde::{Deserialize, Serialize};
use std::ops::RangeInclusive;

/// Exponential backoff with a cap and symmetric jitter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackoffPolicy {
    /// Delay after the first failure, before jitter. Default 1,000 ms.
    pub initial_ms: u64,
    /// How many failures double the delay (1, 2, 4, 8, 16 s for 5) before the cap applies.
    /// Default 5.
    pub doubling_count: u32,
    /// Delay after more than `doubling_count` failures, and an upper bound on every delay
    /// before jitter. Default 60,000 ms.
    pub cap_ms: u64,
    /// Jitter as a percentage of the delay, applied both ways. Default 25.
    pub jitter_percent: u8,
}

/// The longest delay a policy may configure, in ms (one day).
pub const BACKOFF_CAP_MS_MAX: u64 = 24 * 60 * 60 * 1000;
/// The most doublings a policy may configure.
pub const BACKOFF_DOUBLING_COUNT_MAX: u32 = 30;

impl Default for BackoffPolicy {
    fn default() -> Self {
        BackoffPolicy {
            initial_ms: 1_000,
            doubling_count: 5,
            cap_ms: 60_000,
            jitter_percent: 25,
        }
    }
}

impl BackoffPolicy {
    /// The delay after `failures` failed attempts, before jitter.
    ///
    /// # Panics
    /// If `failures` is 0: nothing is retried before it has failed once.
    pub fn base_delay_ms(&self, failures: u32) -> u64 {
        assert!(failures >= 1, "a retry delay needs at least one failure");
        if failures > self.doubling_count {
            return self.cap_ms;
        }
        let doubled = self
            .initial_ms
            .saturating_mul(1u64 << (failures - 1).min(63));
        doubled.min(self.cap_ms)
    }

    /// The range every jittered delay after `failures` failures falls into.
    pub fn envelope_ms(&self, failures: u32) -> RangeInclusive<u64> {
        let base = self.base_delay_ms(failures);
        let jitter = self.jitter_ms(base);
        base - jitter..=base + jitter
    }

    /// The delay after `failures` failed attempts, with jitter drawn from `rng`.
    pub fn delay_ms<R: Rng + ?Sized>(&self, failures: u32, rng: &mut R) -> u64 {
        let base = self.base_delay_ms(failures);
        let jitter = self.jitter_ms(base);
        let delay = base - jitter + rng.random_range(0..=2 * jitter);
        assert!(self.envelope_ms(failures).contains(&delay));
        delay
    }

    fn jitter_ms(&self, base_ms: u64) -> u64 {
        base_ms * u64::from(self.jitter_percent.min(100)) / 100
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn the_seed_schedule_is_reproduced() {
        let policy = BackoffPolicy::default();
        let bases: Vec<u64> = (1..=8).map(|n| policy.base_delay_ms(n)).collect();
        assert_eq!(
            bases,
            [1_000, 2_000, 4_000, 8_000, 16_000, 60_000, 60_000, 60_000]
        );
        assert_eq!(policy.envelope_ms(1), 750..=1_250);
        assert_eq!(policy.envelope_ms(5), 12_000..=20_000);
        assert_eq!(policy.envelope_ms(6), 45_000..=75_000);
    }

    #[test]
    fn the_same_seed_draws_the_same_delays() {
        let policy = BackoffPolicy::default();
        let draw = |seed| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            (1..=10)
                .map(|n| policy.delay_ms(n, &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }

    proptest! {
        #[test]
        fn delays_stay_inside_the_seed_bounds(seed in any::<u64>(), failures in 1u32..40) {
            let policy = BackoffPolicy::default();
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let delay = policy.delay_ms(failures, &mut rng);
            let base = [1_000, 2_000, 4_000, 8_000, 16_000]
                .get(failures as usize - 1)
                .copied()
                .unwrap_or(60_000);
            prop_assert!(delay >= base * 3 / 4);
            prop_assert!(delay <= base * 5 / 4);
        }
    }
}
