//! No loss: every op whose enqueue returned Ok ends applied, in a recorded conflict, rejected
//! with a reason, dead-lettered, expired or blocked — none vanishes. An op the device calls
//! applied must be in the server's commit log.

use super::{Checker, Facts, Violation};
use crate::trace::TraceEvent;
use rockhound_engine::client::observe::Event;
use rockhound_engine::ids::OpId;
use std::collections::{BTreeMap, BTreeSet};

/// Runs the checker.
pub fn check(facts: &Facts<'_>) -> Vec<Violation> {
    let mut settled: BTreeMap<&OpId, usize> = BTreeMap::new();
    for (index, line) in facts.lines.iter().enumerate() {
        if let TraceEvent::Client {
            event: Event::Op(update),
        } = &line.event
        {
            if update.status.is_settled() {
                settled.entry(&update.op_id).or_insert(index);
            }
        }
    }
    let committed: BTreeSet<&OpId> = facts.decided_rows().keys().map(|(_, op)| *op).collect();
    let mut violations = Vec::new();
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
