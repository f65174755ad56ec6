//! Exactly-once effect: no (user, op) and no (user, idempotency key) is decided twice by
//! the server, however often it is sent, replayed or duplicated. The two are checked apart:
//! a server that keyed its memory by op id alone would pass the first and fail the second
//! when two ops share a key.

use super::{Checker, Facts, Violation};
use rockhound_engine::server::wire::{HistoryAction, HistoryRow};
use std::collections::BTreeMap;

/// Runs the checker.
pub fn check(facts: &Facts<'_>) -> Vec<Violation> {
    let mut violations: Vec<Violation> = facts
        .decided_rows()
        .into_iter()
        .filter(|(_, rows)| rows.len() > 1)
        .map(|((user, op_id), rows)| twice(facts, &rows, format!("op {op_id} of {user}")))
        .collect();
    let mut by_key: BTreeMap<(&str, &str), Vec<(usize, &HistoryRow)>> = BTreeMap::new();
    for (line, user, row) in &facts.commits {
        if let (Some(key), Some(_)) = (&row.idempotency_key, &row.write)
            && row.action != HistoryAction::Resolve
        {
            by_key
                .entry((user, key.as_str()))
                .or_default()
                .push((*line, row));
        }
    }
    for ((user, key), rows) in by_key {
        let first_op = rows[0].1.op_id.as_ref();
        if rows.len() > 1 && rows.iter().any(|(_, row)| row.op_id.as_ref() != first_op) {
            violations.push(twice(
                facts,
                &rows,
                format!("idempotency key {key} of {user}"),
            ));
        }
    }
    violations
}

/// The violation of `what` decided by every row of `rows`.
fn twice(facts: &Facts<'_>, rows: &[(usize, &HistoryRow)], what: String) -> Violation {
    let lines: Vec<usize> = rows.iter().map(|(line, _)| *line).collect();
    let seqs: Vec<String> = rows.iter().map(|(_, row)| row.seq.to_string()).collect();
    facts.violation(
        Checker::ExactlyOnce,
        lines[1],
        format!(
            "{what} took effect {} times (commits {})",
            rows.len(),
            seqs.join(", ")
        ),
        &lines,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::{TraceEvent, TraceLine};
    use rockhound_engine::server::replay::LoggedWrite;
    use rockhound_engine::server::wire::{HistoryStatus, OpStatus};
    use rockhound_engine::{DeviceId, EntityId, EntityType, IdempotencyKey, Millis, OpId, OpKind};

    fn commit(seq: u64, op: &str, key: &str) -> TraceLine {
        TraceLine {
            t_ms: 1_000,
            host: "server".into(),
            event: TraceEvent::FinalCommit {
                user: "ann".into(),
                row: Box::new(HistoryRow {
                    seq,
                    at_ms: Millis(1_000),
                    device_id: DeviceId::from("phone"),
                    op_id: Some(OpId(op.into())),
                    idempotency_key: Some(IdempotencyKey(key.into())),
                    entity_type: EntityType::Tag,
                    entity_id: EntityId(format!("tag-{seq}")),
                    action: HistoryAction::Create,
                    status: HistoryStatus::Op(OpStatus::Applied),
                    reason: None,
                    version: Some(1),
                    duration_ms: None,
                    write: Some(LoggedWrite::Op {
                        kind: OpKind::Create,
                        base_version: 0,
                        payload: serde_json::json!({}),
                        client_timestamp_ms: Millis(1_000),
                        strategy: None,
                    }),
                }),
            },
        }
    }

    #[test]
    fn two_ops_decided_under_one_key_are_caught_and_distinct_keys_are_not() {
        let shared = [commit(1, "op-1", "key-1"), commit(2, "op-2", "key-1")];
        let violations = check(&Facts::new(&shared));
        assert_eq!(violations.len(), 1);
        assert!(
            violations[0]
                .message
                .contains("idempotency key key-1 of ann")
        );
        let distinct = [commit(1, "op-1", "key-1"), commit(2, "op-2", "key-2")];
        assert!(check(&Facts::new(&distinct)).is_empty());
    }
}
