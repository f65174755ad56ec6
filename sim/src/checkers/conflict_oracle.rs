//! Conflict oracle: every decision the server made equals the reference strategy's decision,
//! recomputed by replaying the commit log with the pure conflict functions.

use super::{Checker, Facts, Violation};
use rockhound_engine::server::replay::replay_rows;
use rockhound_engine::server::wire::{DecisionCode, HistoryStatus, OpStatus, Reason};

/// Runs the checker.
pub fn check(facts: &Facts<'_>) -> Vec<Violation> {
    let rows: Vec<_> = facts.commits.iter().map(|(_, _, row)| *row).collect();
    let replayed = match replay_rows(rows) {
        Ok(replayed) => replayed,
        Err(mismatch) => {
            return vec![facts.violation(
                Checker::ConflictOracle,
                facts.end_line,
                mismatch.to_string(),
                &[],
            )];
        }
    };
    let mut violations = Vec::new();
    for (index, reference) in replayed.decisions {
        let (line, user, row) = facts.commits[index];
        let seq = row.seq;
        let server = match (row.status, row.reason) {
            (HistoryStatus::Op(OpStatus::Conflict), Some(Reason::Decided(code))) => Some(code),
            _ => None,
        };
        if server != reference {
            let describe = |code: Option<DecisionCode>| {
                code.map_or("a clean write".to_owned(), |c| {
                    format!("conflict decided {c}")
                })
            };
            violations.push(facts.violation(
                Checker::ConflictOracle,
                line,
                format!(
                    "commit {seq} of {user} ({} {} by {}) was {}, the reference strategy gives {}",
                    row.entity_type,
                    row.entity_id,
                    row.op_id.as_ref().map_or("?", |o| o.as_str()),
                    describe(server),
                    describe(reference)
                ),
                &[line],
            ));
        }
    }
    violations
}
