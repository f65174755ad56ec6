//! Backoff, measured: every resend of a failed op waits at least the lower edge of the
//! jitter envelope for its failure number, and an op is dead-lettered exactly when its
//! failures reach `max_retries`, never before and never after. The failure number is
//! counted here, from the trace's failure events; the time is the trace's own. What the
//! coordinator reports (its attempt count, delay and retry time) is only checked against
//! the envelope, never trusted for the bound.
//!
//! An overloaded server's `Retry-After` is honoured: after an answer carrying one (to the
//! coordinator's own request), the device sends no batch until it has passed, unless its
//! process restarted (a new process has not seen it).
//!
//! One exception, by design (ARCHITECTURE.md): when the record of a failed attempt could
//! not be stored (a full disk, a failing fsync) and the device then restarts, the op comes
//! back with its last durable attempt count, which may be lower. After such a restart the
//! count of that op is taken once more from the coordinator's next report.

use super::{Checker, Facts, Violation};
use crate::trace::TraceEvent;
use rockhound_engine::Millis;
use rockhound_engine::client::Status;
use rockhound_engine::client::observe::{Event, OpUpdate};
use rockhound_engine::ids::{BatchId, OpId};
use std::collections::BTreeMap;

/// What the checker knows of one failing op.
#[derive(Clone, Copy, Debug, Default)]
struct Failing {
    /// Failures counted since its last manual retry; `None` right after a restart that lost
    /// a record of it (the next report sets it).
    count: Option<u32>,
    /// The earliest time it may go again, and the line that set it.
    not_before: Option<(Millis, usize)>,
    /// Whether the record of its last failure was stored.
    stored: bool,
}

/// Runs the checker.
pub fn check(facts: &Facts<'_>) -> Vec<Violation> {
    let mut failing: BTreeMap<&OpId, Failing> = BTreeMap::new();
    // host → the line of its last `store_failed` since its last op status change.
    let mut unstored: BTreeMap<&str, usize> = BTreeMap::new();
    let mut violations = Vec::new();
    // host → (the end of its `Retry-After`, the line that set it).
    let mut quiet: BTreeMap<&str, (u64, usize)> = BTreeMap::new();
    for (index, line) in facts.lines.iter().enumerate() {
        let now = Millis(facts.epoch_ms + line.t_ms);
        match &line.event {
            TraceEvent::HttpError {
                retry_after_ms: Some(wait_ms),
                ..
            } => {
                quiet.insert(&line.host, (line.t_ms.saturating_add(*wait_ms), index));
            }
            TraceEvent::Restarted { error: None, .. } => {
                quiet.remove(line.host.as_str());
                for (op_id, op) in failing.iter_mut() {
                    let here = facts.ops.get(*op_id).is_some_and(|o| o.device == line.host);
                    if here && !op.stored {
                        *op = Failing::default();
                    }
                }
            }
            TraceEvent::Client {
                event: Event::StoreFailed { .. },
            } => {
                unstored.insert(line.host.as_str(), index);
            }
            TraceEvent::Client {
                event: Event::Op(update),
            } => {
                // The coordinator logs a status change before it reports it, so a
                // `store_failed` since this device's previous status change is this one's.
                let stored = unstored.remove(line.host.as_str()).is_none();
                let op = failing.entry(&update.op_id).or_default();
                violations.extend(on_update(facts, index, now, update, op, stored));
            }
            TraceEvent::Client {
                event: Event::BatchSent { batch_id, op_ids },
            } => {
                if let Some(&quiet) = quiet.get(line.host.as_str()) {
                    violations.extend(too_early(facts, index, batch_id, quiet));
                }
                for op_id in op_ids {
                    let Some(op) = failing.get_mut(op_id) else {
                        continue;
                    };
                    if let Some((at, scheduled)) = op.not_before.take()
                        && now < at
                    {
                        violations.push(facts.violation(
                            Checker::Backoff,
                            index,
                            format!(
                                "batch {batch_id} sends {op_id} at {} ms, {} ms before the \
                                 shortest wait for its failure {}",
                                line.t_ms,
                                at.since_ms(now),
                                op.count.unwrap_or(0)
                            ),
                            &[scheduled, index],
                        ));
                    }
                }
            }
            _ => {}
        }
    }
    violations
}

/// A batch sent at line `index` while the server's `Retry-After` (its end and the line
/// that said it) still ran.
fn too_early(
    facts: &Facts<'_>,
    index: usize,
    batch_id: &BatchId,
    (until_ms, said): (u64, usize),
) -> Option<Violation> {
    let line = &facts.lines[index];
    (line.t_ms < until_ms).then(|| {
        facts.violation(
            Checker::Backoff,
            index,
            format!(
                "{} sends batch {batch_id} at {} ms, {} ms before the server's Retry-After ends",
                line.host,
                line.t_ms,
                until_ms - line.t_ms
            ),
            &[said, index],
        )
    })
}

/// One status report of an op: a failure (rescheduled or dead-lettered), a manual retry,
/// or anything else.
fn on_update(
    facts: &Facts<'_>,
    index: usize,
    now: Millis,
    update: &OpUpdate,
    op: &mut Failing,
    stored: bool,
) -> Vec<Violation> {
    let policy = facts.config.backoff;
    let limit = facts.config.max_retries;
    let failed = update.delay_ms.is_some() || update.status == Status::Error;
    if !failed {
        if update.attempts == 0 {
            // A manual retry (or a fresh op) starts the count again.
            *op = Failing::default();
            op.count = Some(0);
        }
        return Vec::new();
    }
    let count = op.count.map_or(update.attempts, |c| c + 1);
    op.count = Some(count);
    op.stored = stored;
    let mut violations = Vec::new();
    let mut violate = |message: String| {
        violations.push(facts.violation(Checker::Backoff, index, message, &[index]));
    };
    let dead = update.status == Status::Error;
    match limit {
        Some(max) if dead && count != max => violate(format!(
            "{} dead-lettered after {count} failed attempts; the limit is {max}",
            update.op_id
        )),
        Some(max) if !dead && count >= max => violate(format!(
            "{} goes again after {count} failed attempts; the limit is {max}",
            update.op_id
        )),
        None if dead => violate(format!(
            "{} dead-lettered though retries are unbounded",
            update.op_id
        )),
        _ => {}
    }
    if let Some(delay) = update.delay_ms {
        let envelope = policy.envelope_ms(count.max(1));
        if !envelope.contains(&delay) {
            violate(format!(
                "{} reports a wait of {delay} ms after failure {count}, outside the envelope \
                 {}..={} ms",
                update.op_id,
                envelope.start(),
                envelope.end()
            ));
        }
        op.not_before = Some((now.plus_ms(*envelope.start()), index));
    }
    violations
}
