//! Priority order: within a batch, whenever an op was available (everything it waits on in
//! the batch already placed) when an earlier op was chosen, the earlier op has the smaller
//! `(priority, enqueue order)`.

use super::{Checker, Facts, Violation};
use crate::trace::TraceEvent;
use rockhound_engine::client::observe::Event;
use std::collections::BTreeMap;

/// Runs the checker.
pub fn check(facts: &Facts<'_>) -> Vec<Violation> {
    let mut violations = Vec::new();
    for (index, line) in facts.lines.iter().enumerate() {
        let TraceEvent::Client {
            event: Event::BatchSent { batch_id, op_ids },
        } = &line.event
        else {
            continue;
        };
        let ops: Vec<_> = op_ids.iter().map(|id| facts.ops.get(id)).collect();
        let position: BTreeMap<_, usize> =
            op_ids.iter().enumerate().map(|(i, id)| (id, i)).collect();
        'pairs: for (i, earlier) in ops.iter().enumerate() {
            let Some(earlier) = earlier else { continue };
            for (j, later) in ops.iter().enumerate().skip(i + 1) {
                let Some(later) = later else { continue };
                // Was `later` available when `earlier` was placed at position i?
                let available = later
                    .blockers
                    .iter()
                    .filter_map(|b| position.get(b))
                    .all(|&p| p < i);
                if available && (earlier.priority, earlier.seq) > (later.priority, later.seq) {
                    violations.push(facts.violation(
                        Checker::PriorityOrder,
                        index,
                        format!(
                            "batch {batch_id} places {} (priority {}, seq {}) before {} (priority {}, seq {}), which was ready",
                            op_ids[i], earlier.priority, earlier.seq, op_ids[j], later.priority, later.seq
                        ),
                        &[index, earlier.line, later.line],
                    ));
                    break 'pairs;
                }
            }
        }
    }
    violations
}
