//! Determinism: a second run of the same seed gives the same trace digest. The runner does
//! the second run; this compares the two traces and names the first line that differs.

use super::Checker;
use super::Violation;
use crate::trace::Trace;

/// Compares two runs of one seed.
pub fn compare(seed: u64, first: &Trace, second: &Trace) -> Option<Violation> {
    let first_digest = first.digest();
    let second_digest = second.digest();
    if first_digest == second_digest {
        return None;
    }
    let index = first
        .lines
        .iter()
        .zip(&second.lines)
        .position(|(a, b)| a != b)
        .unwrap_or(first.lines.len().min(second.lines.len()));
    let mut events = Vec::new();
    if let Some(line) = first.lines.get(index) {
        events.push((index, format!("first run:  {}", line.to_json())));
    }
    if let Some(line) = second.lines.get(index) {
        events.push((index, format!("second run: {}", line.to_json())));
    }
    Some(Violation {
        checker: Checker::Determinism,
        seed,
        t_ms: first.lines.get(index).map_or(0, |l| l.t_ms),
        message: format!(
            "a second run of the same seed gave digest {second_digest} instead of {first_digest}; the traces first differ at line {index}"
        ),
        events,
    })
}
