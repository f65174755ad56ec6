//! Integrity: every op the server decided carries exactly the payload its device sealed
//! (checksums were verified on the way); corrupted copies are refused, never applied.

use super::{Checker, Facts, Violation};
use rockhound_engine::checksum::{canonical_json, sha256_hex};
use rockhound_engine::server::replay::LoggedWrite;

/// Runs the checker.
pub fn check(facts: &Facts<'_>) -> Vec<Violation> {
    let mut violations = Vec::new();
    for (line, user, row) in &facts.commits {
        let (Some(op_id), Some(LoggedWrite::Op { payload, .. })) = (&row.op_id, &row.write) else {
            continue;
        };
        let Some(op) = facts.op_of(user, op_id) else {
            continue;
        };
        let Some(sealed) = &op.payload_sha256 else {
            continue;
        };
        let applied = sha256_hex(&canonical_json(payload));
        if &applied != sealed {
            violations.push(facts.violation(
                Checker::Integrity,
                *line,
                format!(
                    "the server decided {op_id} (commit {}) with a payload its device never sealed (sha256 {applied}, sealed {sealed})",
                    row.seq
                ),
                &[*line, op.line],
            ));
        }
    }
    violations
}
