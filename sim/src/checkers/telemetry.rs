//! Telemetry equals outcomes: the seven telemetry events a device emits match what went on
//! the wire and what the server answered, as the trace recorded them apart from the
//! coordinator (`batch_sent` for what left, `answered` for each answer the simulation
//! received, with its batch id).
//!
//! - Every op of every batch sent has exactly one `sync_operation_start` for that batch.
//! - A batch ends in at most one of `sync_batch_success` (only after an answer to it
//!   arrived) and `sync_batch_error`.
//! - The answer a device took (its `sync_batch_success`) fixes each op's events: applied,
//!   duplicate and conflict give one `sync_operation_success`; a conflict (or the duplicate
//!   of an op that met one: its answer names the decision) gives one
//!   `sync_conflict_detected`, and one `sync_conflict_resolved` unless it waits for a
//!   person; rejected, retry and a missing result give one `sync_operation_error` (blocked
//!   gives one or none: behind a failed dependency the op is parked, not failed). A failed
//!   batch gives one `sync_operation_error` per op, except a batch an overloaded server
//!   refused with `Retry-After` (abandoned, no op failed: none). Nothing else emits them.
//! - Telemetry switched off emits nothing.

use super::{Checker, Facts, Violation};
use crate::trace::{RequestKind, TraceEvent};
use rockhound_engine::client::observe::{Event, TelemetryKind};
use rockhound_engine::ids::{BatchId, OpId};
use rockhound_engine::server::wire::{DecisionCode, OpStatus, Reason, Refusal};
use std::collections::BTreeMap;

/// Per (device, op, kind): how many events are expected and how many came.
type Tally<'a> = BTreeMap<(&'a str, &'a OpId, TelemetryKind), Count>;

/// One op's result in an answer: (op, status, reason).
type Answer = (OpId, OpStatus, Option<Reason>);

/// What one op should have and did emit of one kind.
#[derive(Clone, Copy, Debug, Default)]
struct Count {
    min: u32,
    max: u32,
    got: u32,
    line: usize,
}

/// One batch of one device: its ops, the answer that arrived, and how it ended.
#[derive(Default)]
struct BatchFacts<'a> {
    ops: Option<&'a [OpId]>,
    answer: Option<(usize, &'a [Answer])>,
    ended: Vec<(TelemetryKind, usize)>,
    /// Refused by an overloaded server with `Retry-After`: abandoned, not failed.
    shed: bool,
}

/// Runs the checker.
// Long on purpose: one pass that sorts every line into the batch and op tallies, then the
// two comparisons; split, the tallies would travel through several signatures.
pub fn check(facts: &Facts<'_>) -> Vec<Violation> {
    if !facts.config.enable_telemetry {
        return switched_off(facts);
    }
    let mut violations = Vec::new();
    let mut batches: BTreeMap<(&str, &BatchId), BatchFacts<'_>> = BTreeMap::new();
    let mut tally: Tally<'_> = BTreeMap::new();
    let mut latest: BTreeMap<&str, &BatchId> = BTreeMap::new();
    for (index, line) in facts.lines.iter().enumerate() {
        let host = line.host.as_str();
        match &line.event {
            TraceEvent::HttpError {
                request: RequestKind::Batch,
                retry_after_ms: Some(_),
                ..
            } => {
                if let Some(batch_id) = latest.get(host) {
                    batches.entry((host, batch_id)).or_default().shed = true;
                }
            }
            TraceEvent::Client {
                event: Event::BatchSent { batch_id, op_ids },
            } => {
                latest.insert(host, batch_id);
                batches.entry((host, batch_id)).or_default().ops = Some(op_ids);
                for op_id in op_ids {
                    expect(
                        &mut tally,
                        host,
                        op_id,
                        TelemetryKind::SyncOperationStart,
                        (1, 1),
                        index,
                    );
                }
            }
            TraceEvent::Answered {
                batch_id: Some(batch_id),
                results,
                ..
            } => {
                let batch = batches.entry((host, batch_id)).or_default();
                batch.answer.get_or_insert((index, results));
            }
            TraceEvent::Client {
                event:
                    Event::Telemetry {
                        kind,
                        op_id,
                        batch_id,
                        ..
                    },
            } => {
                if let (TelemetryKind::SyncBatchSuccess | TelemetryKind::SyncBatchError, Some(b)) =
                    (kind, batch_id)
                {
                    let batch = batches.entry((host, b)).or_default();
                    batch.ended.push((*kind, index));
                    if *kind == TelemetryKind::SyncBatchSuccess {
                        violations.extend(take_answer(facts, &mut tally, host, b, batch, index));
                    } else {
                        let errors = if batch.shed { (0, 0) } else { (1, 1) };
                        for op_id in batch.ops.unwrap_or_default() {
                            expect(
                                &mut tally,
                                host,
                                op_id,
                                TelemetryKind::SyncOperationError,
                                errors,
                                index,
                            );
                        }
                    }
                }
                if let Some(op_id) = op_id {
                    let count = tally.entry((host, op_id, *kind)).or_default();
                    count.got += 1;
                    count.line = index;
                }
            }
            _ => {}
        }
    }
    for ((host, batch_id), batch) in &batches {
        if batch.ended.len() > 1 {
            let lines: Vec<usize> = batch.ended.iter().map(|(_, l)| *l).collect();
            violations.push(facts.violation(
                Checker::Telemetry,
                lines[1],
                format!(
                    "{host}'s batch {batch_id} ends {} times in telemetry",
                    lines.len()
                ),
                &lines,
            ));
        }
    }
    for ((host, op_id, kind), count) in &tally {
        if count.got < count.min || count.got > count.max {
            let expected = if count.min == count.max {
                count.min.to_string()
            } else {
                format!("{} to {}", count.min, count.max)
            };
            violations.push(facts.violation(
                Checker::Telemetry,
                count.line,
                format!(
                    "{host} emitted {} {} for {op_id}; its batches and answers call for {expected}",
                    count.got,
                    kind.as_str()
                ),
                &[count.line],
            ));
        }
    }
    violations
}

/// Adds an expectation of `(min, max)` events of `kind` for one op.
fn expect<'a>(
    tally: &mut Tally<'a>,
    host: &'a str,
    op_id: &'a OpId,
    kind: TelemetryKind,
    (min, max): (u32, u32),
    line: usize,
) {
    let count = tally.entry((host, op_id, kind)).or_default();
    count.min += min;
    count.max += max;
    if count.got == 0 {
        count.line = line;
    }
}

/// The device took the answer to `batch_id` (its `sync_batch_success` at `line`): what
/// each op of it must emit.
fn take_answer<'a>(
    facts: &Facts<'_>,
    tally: &mut Tally<'a>,
    host: &'a str,
    batch_id: &BatchId,
    batch: &BatchFacts<'a>,
    line: usize,
) -> Vec<Violation> {
    let Some((_, results)) = batch.answer else {
        return vec![facts.violation(
            Checker::Telemetry,
            line,
            format!("{host} reports sync_batch_success for {batch_id}, which no answer reached"),
            &[line],
        )];
    };
    let ops = batch.ops.unwrap_or_default();
    for op_id in ops {
        let result = results.iter().find(|(id, _, _)| id == op_id);
        let mut one = |kind| expect(tally, host, op_id, kind, (1, 1), line);
        match result {
            Some((
                _,
                status @ (OpStatus::Applied | OpStatus::Duplicate | OpStatus::Conflict),
                reason,
            )) => {
                one(TelemetryKind::SyncOperationSuccess);
                // A conflict (or the duplicate of an op that met one) names its decision.
                if *status == OpStatus::Conflict || matches!(reason, Some(Reason::Decided(_))) {
                    one(TelemetryKind::SyncConflictDetected);
                    if *reason != Some(Reason::Decided(DecisionCode::Manual)) {
                        one(TelemetryKind::SyncConflictResolved);
                    }
                }
            }
            Some((_, OpStatus::Blocked, reason)) => {
                let parked = *reason == Some(Refusal::DependencyFailed.into());
                let range = if parked { (0, 1) } else { (1, 1) };
                expect(
                    tally,
                    host,
                    op_id,
                    TelemetryKind::SyncOperationError,
                    range,
                    line,
                );
            }
            Some((_, OpStatus::Rejected | OpStatus::Retry, _)) | None => {
                one(TelemetryKind::SyncOperationError);
            }
        }
    }
    Vec::new()
}

/// With telemetry switched off, any telemetry event is a violation.
fn switched_off(facts: &Facts<'_>) -> Vec<Violation> {
    let emitted = facts
        .lines
        .iter()
        .enumerate()
        .find_map(|(index, line)| match &line.event {
            TraceEvent::Client {
                event: Event::Telemetry { kind, .. },
            } => Some((index, line, kind)),
            _ => None,
        });
    emitted
        .map(|(index, line, kind)| {
            facts.violation(
                Checker::Telemetry,
                index,
                format!(
                    "{} emits {} with telemetry switched off",
                    line.host,
                    kind.as_str()
                ),
                &[index],
            )
        })
        .into_iter()
        .collect()
}
