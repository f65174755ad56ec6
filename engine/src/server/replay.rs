//! The reference replay: rebuilds every entity from the history rows (the commit log) with
//! the pure conflict functions alone, and compares the result with the server's tables.
//!
//! The server's own path (idempotency, dependencies, ownership, atomic commits) is far more
//! involved than `detect → resolve → commit`; if the two ever disagree, the server applied
//! something the engine would not have decided (a lost or doubled write, a torn commit).
//! The simulation's convergence checker and the server property test both use it.

use super::tables::{EntityKey, Tables};
use super::wire::{DecisionCode, HistoryRow};
use crate::conflict::{self, Decision, Detection, ServerEntity, Write};
use serde_json::Value;
use std::collections::BTreeMap;

pub use super::wire::LoggedWrite;

/// Where the replay and the server disagree.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error(
    "replay of the commit log disagrees with the server at {entity_type} {entity_id}: {detail}"
)]
pub struct ReplayMismatch {
    /// The entity's type.
    pub entity_type: String,
    /// The entity's id.
    pub entity_id: String,
    /// What differs.
    pub detail: String,
}

/// What a replay of the commit log gives: every entity, and for each row that carried a
/// write, the reference decision (`None` for a clean write, else the decision code a
/// conflict result carries).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Replayed {
    /// The entities as the log builds them.
    pub entities: BTreeMap<EntityKey, ServerEntity>,
    /// `(row index, reference decision code)` for each row with an op write, in commit
    /// order; the index is the row's position in the rows replayed (a row's `seq` counts
    /// its user's commits only, so it does not name a row among several users').
    pub decisions: Vec<(usize, Option<DecisionCode>)>,
}

/// Rebuilds every entity from the history rows, in commit order.
pub fn replay(tables: &Tables) -> Result<BTreeMap<EntityKey, ServerEntity>, ReplayMismatch> {
    let mut rows: Vec<_> = tables.sync_history.values().collect();
    rows.sort_by_key(|row| row.seq);
    replay_rows(rows).map(|replayed| replayed.entities)
}

/// Replays history rows given in commit order with the pure conflict functions alone.
pub fn replay_rows<'a>(
    rows: impl IntoIterator<Item = &'a HistoryRow>,
) -> Result<Replayed, ReplayMismatch> {
    let mut replayed = Replayed::default();
    let model = &mut replayed.entities;
    for (index, row) in rows.into_iter().enumerate() {
        let key = (row.entity_type, row.entity_id.clone());
        let mismatch = |detail: String| ReplayMismatch {
            entity_type: key.0.to_string(),
            entity_id: key.1.to_string(),
            detail,
        };
        match &row.write {
            None => {}
            Some(LoggedWrite::Resolution { entity }) => {
                model.insert(key.clone(), entity.clone());
            }
            Some(LoggedWrite::Op {
                kind,
                base_version,
                payload,
                client_timestamp_ms,
                strategy,
            }) => {
                let write = Write {
                    kind: *kind,
                    base_version: *base_version,
                    payload,
                    timestamp_ms: *client_timestamp_ms,
                    device_id: &row.device_id,
                };
                let server = model.get(&key);
                let (decision, code) = match conflict::detect(server, &write) {
                    Detection::Clean => (conflict::apply_clean(server, &write), None),
                    Detection::Conflict(case) => {
                        let strategy = strategy
                            .ok_or_else(|| mismatch(format!("row {} has no strategy", row.seq)))?;
                        let decision = conflict::resolve(
                            strategy,
                            case,
                            server.expect("conflicts need an entity"),
                            &write,
                        );
                        let code = (decision != Decision::AlreadyDone)
                            .then(|| super::decision_code(&decision, strategy));
                        (decision, code)
                    }
                    Detection::Invalid(invalid) => {
                        return Err(mismatch(format!(
                            "row {} replays as invalid ({invalid})",
                            row.seq
                        )));
                    }
                };
                replayed.decisions.push((index, code));
                if let Some(next) = conflict::commit(server, &decision, &write) {
                    model.insert(key.clone(), next);
                }
            }
        }
    }
    Ok(replayed)
}

/// Checks that the server's entities equal the replay of its commit log.
pub fn verify(tables: &Tables) -> Result<(), ReplayMismatch> {
    let model = replay(tables)?;
    let keys: std::collections::BTreeSet<&EntityKey> =
        model.keys().chain(tables.entities.keys()).collect();
    for key in keys {
        let expected = model.get(key);
        let actual = tables.entities.get(key).map(|s| &s.state);
        if expected != actual {
            return Err(ReplayMismatch {
                entity_type: key.0.to_string(),
                entity_id: key.1.to_string(),
                detail: format!(
                    "replay gives {}, the server holds {}",
                    describe(expected),
                    describe(actual)
                ),
            });
        }
    }
    Ok(())
}

fn describe(entity: Option<&ServerEntity>) -> String {
    match entity {
        None => "nothing".to_owned(),
        Some(e) => format!(
            "version {}{} {}",
            e.version,
            if e.deleted { " (deleted)" } else { "" },
            Value::Object(e.fields.clone())
        ),
    }
}
