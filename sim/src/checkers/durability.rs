//! Durable on acknowledgement: when `enqueue` returns Ok, the op's record is on the durable
//! image of the device's simulated disk, not only in memory or in an unsynced write. The
//! world reads the disk's bytes at that moment (not what the coordinator reports) and
//! traces `not_durable` when the record is missing; this checker reports each one.

use super::{Checker, Facts, Violation};
use crate::trace::TraceEvent;

/// Runs the checker.
pub fn check(facts: &Facts<'_>) -> Vec<Violation> {
    facts
        .lines
        .iter()
        .enumerate()
        .filter_map(|(line, trace_line)| match &trace_line.event {
            TraceEvent::NotDurable { op_id } => Some(facts.violation(
                Checker::Durability,
                line,
                format!(
                    "{} acknowledged op {op_id} before its record was durable",
                    trace_line.host
                ),
                &[line],
            )),
            _ => None,
        })
        .collect()
}
