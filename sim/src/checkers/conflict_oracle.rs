//! Conflict oracle: every write the server decided, and every entity it ended with, equals
//! what an independent reference model of the decision table says ([`super::reference`]:
//! written from docs/conflicts.md, sharing no code with the engine's conflict functions,
//! its replay or its server). Fed the commit log in order, the model predicts each logged
//! write's status, decision code or refusal, and the version it leaves; at the end every
//! entity's version, tombstone and fields must match. The replay-consistency half of
//! `convergence` stays a separate check.

use super::reference::{Model, answered};
use super::{Checker, Facts, Violation};
use rockhound_engine::server::wire::Reason;

/// Runs the checker.
pub fn check(facts: &Facts<'_>) -> Vec<Violation> {
    let mut model = Model::new(&facts.config);
    let mut violations = Vec::new();
    for (line, user, row) in &facts.commits {
        let Some(expected) = model.feed(row) else {
            continue;
        };
        let server = answered(row);
        if server != expected {
            let describe = |status, reason: Option<Reason>, version: Option<u64>| {
                let reason = reason.map_or(String::new(), |r| format!(" {r}"));
                let version = version.map_or(String::new(), |v| format!(" at version {v}"));
                format!("{status:?}{reason}{version}").to_lowercase()
            };
            violations.push(facts.violation(
                Checker::ConflictOracle,
                *line,
                format!(
                    "commit {} of {user} ({} {} by {}) was {}, the reference model gives {}",
                    row.seq,
                    row.entity_type,
                    row.entity_id,
                    row.op_id.as_ref().map_or("?", |o| o.as_str()),
                    describe(server.status, server.reason, server.version),
                    describe(expected.status, expected.reason, expected.version),
                ),
                &[*line],
            ));
        }
    }
    for ((entity_type, entity_id), (line, _, snapshot)) in &facts.entities {
        let model_entity = model.entities.get(&(*entity_type, entity_id.0.clone()));
        let agrees = model_entity.is_some_and(|m| {
            m.version == snapshot.version
                && m.deleted == snapshot.deleted
                && (m.deleted || serde_json::Value::Object(m.fields.clone()) == snapshot.entity)
        });
        if !agrees {
            let model_says = model_entity.map_or("nothing".to_owned(), |m| {
                format!(
                    "version {}{} {}",
                    m.version,
                    if m.deleted { " (deleted)" } else { "" },
                    serde_json::Value::Object(m.fields.clone())
                )
            });
            violations.push(facts.violation(
                Checker::ConflictOracle,
                *line,
                format!(
                    "the server ended with {entity_type} {entity_id} at version {}{} {}, the reference model with {model_says}",
                    snapshot.version,
                    if snapshot.deleted { " (deleted)" } else { "" },
                    snapshot.entity
                ),
                &[*line],
            ));
        }
    }
    violations
}
