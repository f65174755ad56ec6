//! Dependency order: no op goes out before what it blocks on (its parents' creates and the
//! earlier ops on its entity), unless those are earlier in the same batch; and the server
//! commits no op before its wire dependencies.

use super::{Checker, Facts, Violation};
use crate::trace::TraceEvent;
use rockhound_engine::client::observe::Event;
use rockhound_engine::ids::OpId;
use rockhound_engine::server::wire::HistoryAction;
use std::collections::{BTreeMap, BTreeSet};

/// Runs the checker.
pub fn check(facts: &Facts<'_>) -> Vec<Violation> {
    let mut violations = Vec::new();
    // Sends: replay the trace, tracking which ops have settled on each device.
    let mut settled: BTreeSet<&OpId> = BTreeSet::new();
    for (index, line) in facts.lines.iter().enumerate() {
        let TraceEvent::Client { event } = &line.event else {
            continue;
        };
        match event {
            Event::Op(update) if update.status.is_settled() => {
                settled.insert(&update.op_id);
            }
            Event::BatchSent { batch_id, op_ids } => {
                let position: BTreeMap<&OpId, usize> =
                    op_ids.iter().enumerate().map(|(i, id)| (id, i)).collect();
                for (i, op_id) in op_ids.iter().enumerate() {
                    let Some(op) = facts.ops.get(op_id) else {
                        continue;
                    };
                    for blocker in &op.blockers {
                        let before = position.get(blocker).is_some_and(|&j| j < i);
                        if !settled.contains(blocker) && !before {
                            let mut lines = vec![index, op.line];
                            lines.extend(facts.ops.get(blocker).map(|b| b.line));
                            violations.push(facts.violation(
                                Checker::DependencyOrder,
                                index,
                                format!("batch {batch_id} sends {op_id} before {blocker}, which it waits on and which had not settled"),
                                &lines,
                            ));
                        }
                    }
                }
            }
            _ => {}
        }
    }
    // Commits: every wire dependency is decided before the op that names it.
    let mut decided: BTreeSet<(&str, &OpId)> = BTreeSet::new();
    for (line, user, row) in &facts.commits {
        let Some(op_id) = &row.op_id else { continue };
        if row.write.is_none() || row.action == HistoryAction::Resolve {
            continue;
        }
        if let Some(op) = facts.op_of(user, op_id) {
            for dependency in &op.depends_on {
                if !decided.contains(&(*user, dependency)) {
                    violations.push(facts.violation(
                        Checker::DependencyOrder,
                        *line,
                        format!("the server committed {op_id} (commit {}) before its dependency {dependency}", row.seq),
                        &[*line, op.line],
                    ));
                }
            }
        }
        decided.insert((user, op_id));
    }
    violations
}
