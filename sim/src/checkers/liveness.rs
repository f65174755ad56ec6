//! Liveness: once everything is healed, every queue drains (nothing pending or in flight)
//! and every device converges within the liveness bound.

use super::{Checker, Facts, Violation};
use rockhound_engine::client::Status;

/// Runs the checker.
pub fn check(facts: &Facts<'_>) -> Vec<Violation> {
    let mut violations = Vec::new();
    for (device, (line, queue, _)) in &facts.final_devices {
        let stuck: Vec<String> = queue
            .iter()
            .filter(|(_, status)| matches!(status, Status::Pending | Status::InFlight))
            .map(|(op, status)| format!("{op} ({status})"))
            .collect();
        if !stuck.is_empty() {
            violations.push(facts.violation(
                Checker::Liveness,
                *line,
                format!(
                    "{device} still holds {} undrained op(s) at the end: {}",
                    stuck.len(),
                    stuck.iter().take(5).cloned().collect::<Vec<_>>().join(", ")
                ),
                &[*line],
            ));
        }
    }
    if facts.converged_line.is_none() {
        let bound = facts.lines.last().map_or(0, |l| l.t_ms) - facts.liveness_at_ms.unwrap_or(0);
        violations.push(facts.violation(
            Checker::Liveness,
            facts.end_line,
            format!("the devices did not drain and converge within the liveness bound ({bound} ms after healing)"),
            &[facts.end_line],
        ));
    }
    violations
}
