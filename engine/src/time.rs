//! Simulated and wall-clock time as integer milliseconds since the Unix epoch.
//!
//! The engine never asks what time it is: every function that needs the time takes a
//! [`Millis`] argument. On the wire and in configuration, times are plain integers in ms.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A point in time: integer milliseconds since the Unix epoch (1970-01-01T00:00:00Z).
///
/// A device's wall clock may be skewed, so two `Millis` from different devices are only
/// comparable as claims, never as truth.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Millis(pub u64);

/// One second in milliseconds.
pub const SECOND_MS: u64 = 1_000;
/// One minute in milliseconds.
pub const MINUTE_MS: u64 = 60 * SECOND_MS;
/// One hour in milliseconds.
pub const HOUR_MS: u64 = 60 * MINUTE_MS;
/// One day in milliseconds.
pub const DAY_MS: u64 = 24 * HOUR_MS;

/// The earliest timestamp an operation may carry: 2000-01-01T00:00:00Z.
pub const TIMESTAMP_MS_MIN: Millis = Millis(946_684_800_000);
/// The latest timestamp an operation may carry: 2100-01-01T00:00:00Z.
pub const TIMESTAMP_MS_MAX: Millis = Millis(4_102_444_800_000);

impl Millis {
    /// The timestamp as a plain integer of milliseconds.
    pub fn as_ms(self) -> u64 {
        self.0
    }

    /// This time plus `duration_ms`, saturating at `u64::MAX`.
    #[must_use]
    pub fn plus_ms(self, duration_ms: u64) -> Millis {
        Millis(self.0.saturating_add(duration_ms))
    }

    /// Milliseconds from `earlier` to `self`, or 0 when `earlier` is later.
    pub fn since_ms(self, earlier: Millis) -> u64 {
        self.0.saturating_sub(earlier.0)
    }

    /// Whether the timestamp lies inside the range an operation may carry.
    pub fn is_plausible(self) -> bool {
        (TIMESTAMP_MS_MIN..=TIMESTAMP_MS_MAX).contains(&self)
    }
}

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plausible_range_is_the_twenty_first_century() {
        assert!(TIMESTAMP_MS_MIN.is_plausible());
        assert!(TIMESTAMP_MS_MAX.is_plausible());
        assert!(!Millis(0).is_plausible());
        assert!(!TIMESTAMP_MS_MAX.plus_ms(1).is_plausible());
    }

    #[test]
    fn arithmetic_saturates_instead_of_wrapping() {
        assert_eq!(Millis(u64::MAX).plus_ms(5), Millis(u64::MAX));
        assert_eq!(Millis(3).since_ms(Millis(10)), 0);
        assert_eq!(Millis(10).since_ms(Millis(3)), 7);
    }
}
