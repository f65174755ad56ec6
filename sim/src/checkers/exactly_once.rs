//! Exactly-once effect: no (user, op) and no (user, idempotency key) is decided twice by
//! the server, however often it is sent, replayed or duplicated. The two are checked apart:
//! a server that keyed its memory by op id alone would pass the first and fail the second
//! when two ops share a key.
//!
//! And the other half, at least once: no op is answered `duplicate`, or refused as reusing
//! an idempotency key or an op id, unless its user sent that key (or op id) before. Keys
//! and op ids are the user's own; another user's op under the same ids must not stand in
//! for this one (its write would be lost, with an answer that reads as settled).

use super::{Checker, Facts, Violation};
use rockhound_engine::server::HISTORY_RETENTION_MS;
use rockhound_engine::server::wire::{
    HistoryAction, HistoryRow, HistoryStatus, OpStatus, Reason, Refusal,
};
use std::collections::{BTreeMap, BTreeSet};

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
        // Two rows of one key are a violation only when they are of two ops (one op decided
        // twice is the first check's).
        let first_op = rows[0].1.op_id.as_ref();
        if rows.iter().any(|(_, row)| row.op_id.as_ref() != first_op) {
            violations.push(twice(
                facts,
                &rows,
                format!("idempotency key {key} of {user}"),
            ));
        }
    }
    violations.extend(never_sent_before(facts));
    violations
}

/// Rows that claim an earlier op of their user (a `duplicate`, a reused key or op id) when
/// the log holds none. A row the server's cleanup may have removed (older than the history
/// retention) counts as possibly there.
fn never_sent_before(facts: &Facts<'_>) -> Vec<Violation> {
    let mut keys: BTreeSet<(&str, &str)> = BTreeSet::new();
    let mut op_ids: BTreeSet<(&str, &str)> = BTreeSet::new();
    let mut violations = Vec::new();
    for (line, user, row) in &facts.commits {
        let key = row.idempotency_key.as_ref().map(|k| k.as_str());
        let op_id = row.op_id.as_ref().map(|o| o.as_str());
        let claimed = match (row.status, row.reason) {
            (HistoryStatus::Op(OpStatus::Duplicate), _)
            | (_, Some(Reason::Refused(Refusal::IdempotencyKeyReused))) => key
                .filter(|k| !keys.contains(&(user, k)))
                .map(|k| ("idempotency key", k)),
            (_, Some(Reason::Refused(Refusal::OpIdReused))) => op_id
                .filter(|o| !op_ids.contains(&(user, o)))
                .map(|o| ("op id", o)),
            _ => None,
        };
        let may_be_cleaned = row.at_ms.0.saturating_sub(facts.epoch_ms) >= HISTORY_RETENTION_MS;
        if let Some((what, id)) = claimed.filter(|_| !may_be_cleaned) {
            violations.push(facts.violation(
                Checker::ExactlyOnce,
                *line,
                format!(
                    "op {} of {user} was answered {}{} (commit {}), but {user} never sent {what} {id} before",
                    op_id.unwrap_or("?"),
                    row.status,
                    row.reason.map(|r| format!(" {r}")).unwrap_or_default(),
                    row.seq
                ),
                &[*line],
            ));
        }
        keys.extend(key.map(|k| (*user, k)));
        op_ids.extend(op_id.map(|o| (*user, o)));
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

    /// `commit` refused as reusing an op id (nothing written, the answer logged).
    fn op_id_reused(seq: u64, op: &str, key: &str) -> TraceLine {
        let mut line = commit(seq, op, key);
        if let TraceEvent::FinalCommit { row, .. } = &mut line.event {
            row.status = HistoryStatus::Op(OpStatus::Rejected);
            row.reason = Some(Reason::Refused(Refusal::OpIdReused));
            row.write = None;
        }
        line
    }

    #[test]
    fn an_op_id_refused_as_reused_must_have_been_sent_before_by_its_user() {
        // Ann sent op-1 under key-1; op-1 again under key-2 is rightly refused.
        let sent = [commit(1, "op-1", "key-1"), op_id_reused(2, "op-1", "key-2")];
        assert!(check(&Facts::new(&sent)).is_empty());
        // Ann never sent op-7: refusing it as reused means someone else's op stood in.
        let never = [commit(1, "op-1", "key-1"), op_id_reused(2, "op-7", "key-2")];
        let violations = check(&Facts::new(&never));
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert!(
            violations[0]
                .message
                .contains("but ann never sent op id op-7 before"),
            "{}",
            violations[0].message
        );
    }
}
