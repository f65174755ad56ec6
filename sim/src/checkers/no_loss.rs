//! No loss: every op whose enqueue returned Ok ends applied, in a recorded conflict, rejected
//! with a reason, dead-lettered, expired or blocked, or discarded by its user with its event
//! — none vanishes. An op the device calls applied must be in the server's commit log. An op
//! expires only past the queue TTL, counted from its enqueue.

use super::{Checker, Facts, Violation};
use crate::trace::TraceEvent;
use rockhound_engine::client::Status;
use rockhound_engine::client::observe::Event;
use rockhound_engine::ids::OpId;
use std::collections::{BTreeMap, BTreeSet};

/// Runs the checker.
pub fn check(facts: &Facts<'_>) -> Vec<Violation> {
    let mut settled: BTreeMap<&OpId, usize> = BTreeMap::new();
    let mut discarded: BTreeSet<&OpId> = BTreeSet::new();
    let mut violations = Vec::new();
    for (index, line) in facts.lines.iter().enumerate() {
        match &line.event {
            TraceEvent::Client {
                event: Event::Op(update),
            } => {
                if update.status.is_settled() {
                    settled.entry(&update.op_id).or_insert(index);
                }
                if update.status == Status::Expired
                    && let Some(op) = facts.ops.get(&update.op_id)
                    && line.t_ms < op.t_ms + facts.config.queue_ttl_ms
                {
                    violations.push(facts.violation(
                        Checker::NoLoss,
                        index,
                        format!(
                            "op {} expired {} ms after its enqueue, before the queue TTL of {} ms",
                            update.op_id,
                            line.t_ms - op.t_ms,
                            facts.config.queue_ttl_ms
                        ),
                        &[op.line, index],
                    ));
                }
            }
            TraceEvent::Client {
                event: Event::Discarded { op_id, .. },
            } => {
                discarded.insert(op_id);
            }
            _ => {}
        }
    }
    let committed: BTreeSet<&OpId> = facts.decided_rows().keys().map(|(_, op)| *op).collect();
    for (op_id, op) in &facts.ops {
        let final_queue = facts.final_devices.get(&op.device);
        let queued =
            final_queue.is_some_and(|(_, queue, _)| queue.iter().any(|(id, _)| id == op_id));
        match (settled.get(op_id), queued) {
            (Some(&line), _) => {
                if !committed.contains(op_id) {
                    violations.push(facts.violation(
                        Checker::NoLoss,
                        line,
                        format!(
                            "{} calls op {op_id} settled, but the server never committed it",
                            op.device
                        ),
                        &[op.line, line],
                    ));
                }
            }
            (None, true) => {}
            (None, false) if discarded.contains(op_id) => {}
            (None, false) => {
                let at = final_queue.map_or(facts.end_line, |(line, _, _)| *line);
                violations.push(facts.violation(
                    Checker::NoLoss,
                    at,
                    format!(
                        "op {op_id}, acknowledged by {} at {} ms, vanished: it never settled and is not in the final queue",
                        op.device, op.t_ms
                    ),
                    &[op.line, at],
                ));
            }
        }
    }
    violations
}
