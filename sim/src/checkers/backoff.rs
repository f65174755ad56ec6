//! Backoff conformance: every retry delay lies in the schedule's jitter envelope for its
//! attempt number, and no op goes out again before its retry time.
//!
//! One exception, by design (ARCHITECTURE.md): when the record of a failed attempt could
//! not be stored (a full disk, a failing fsync) and the device then restarts, the op comes
//! back with its last durable attempt count and retry time, which may be earlier. A retry
//! time whose record was lost binds only until the device's next restart.

use super::{Checker, Facts, Violation};
use crate::trace::TraceEvent;
use rockhound_engine::Millis;
use rockhound_engine::client::observe::Event;
use rockhound_engine::ids::OpId;
use std::collections::BTreeMap;

/// Runs the checker.
pub fn check(facts: &Facts<'_>) -> Vec<Violation> {
    let policy = facts.config.backoff;
    let mut violations = Vec::new();
    // op → (retry time, line of the event that scheduled it, whether its record was stored)
    let mut not_before: BTreeMap<&OpId, (Millis, usize, bool)> = BTreeMap::new();
    // host → the line of its last `store_failed` since its last op status change.
    let mut unstored: BTreeMap<&str, usize> = BTreeMap::new();
    for (index, line) in facts.lines.iter().enumerate() {
        if let TraceEvent::Restarted { error: None, .. } = &line.event {
            not_before.retain(|op_id, (_, _, stored)| {
                *stored
                    || facts
                        .ops
                        .get(*op_id)
                        .is_none_or(|op| op.device != line.host)
            });
            continue;
        }
        let TraceEvent::Client { event } = &line.event else {
            continue;
        };
        match event {
            Event::StoreFailed { .. } => {
                unstored.insert(line.host.as_str(), index);
            }
            Event::Op(update) => {
                // The coordinator logs a status change before it reports it, so a
                // `store_failed` since this device's previous status change is this one's.
                let stored = unstored.remove(line.host.as_str()).is_none();
                if let (Some(delay), Some(at)) = (update.delay_ms, update.next_attempt_at_ms) {
                    let envelope = policy.envelope_ms(update.attempts.max(1));
                    if !envelope.contains(&delay) {
                        violations.push(facts.violation(
                            Checker::Backoff,
                            index,
                            format!(
                                "{} waits {delay} ms after failure {}, outside the envelope {}..={} ms",
                                update.op_id,
                                update.attempts,
                                envelope.start(),
                                envelope.end()
                            ),
                            &[index],
                        ));
                    }
                    not_before.insert(&update.op_id, (at, index, stored));
                } else if update.attempts == 0 {
                    // A manual retry starts the schedule again.
                    not_before.remove(&update.op_id);
                }
            }
            Event::BatchSent { batch_id, op_ids } => {
                let now = Millis(facts.epoch_ms + line.t_ms);
                for op_id in op_ids {
                    if let Some((at, scheduled, _)) = not_before.remove(op_id) {
                        if now < at {
                            violations.push(facts.violation(
                                Checker::Backoff,
                                index,
                                format!(
                                    "batch {batch_id} sends {op_id} at {} ms, {} ms before its retry time",
                                    line.t_ms,
                                    at.since_ms(now)
                                ),
                                &[scheduled, index],
                            ));
                        }
                    }
                }
            }
            _ => {}
        }
    }
    violations
}
