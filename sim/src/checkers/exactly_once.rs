//! Exactly-once effect: no (user, op) — hence no (user, idempotency key) — is decided twice
//! by the server, however often it is sent, replayed or duplicated.

use super::{Checker, Facts, Violation};

/// Runs the checker.
pub fn check(facts: &Facts<'_>) -> Vec<Violation> {
    facts
        .decided_rows()
        .into_iter()
        .filter(|(_, rows)| rows.len() > 1)
        .map(|((user, op_id), rows)| {
            let lines: Vec<usize> = rows.iter().map(|(line, _)| *line).collect();
            let seqs: Vec<String> = rows.iter().map(|(_, row)| row.seq.to_string()).collect();
            facts.violation(
                Checker::ExactlyOnce,
                lines[1],
                format!(
                    "op {op_id} of {user} took effect {} times (commits {})",
                    rows.len(),
                    seqs.join(", ")
                ),
                &lines,
            )
        })
        .collect()
}
