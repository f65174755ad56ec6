//! Referential integrity after every commit: walking the commit log in order with the
//! reference model's entities ([`super::reference`]), no live entity ever references a
//! parent that is missing, deleted or another user's. A delete that orphans a live child,
//! or a child written under a deleted parent, shows at the commit that did it, not only
//! at the end of the run.
//!
//! The parent fields are this module's own table (`<parent>_id`, as docs/entities and the
//! seed say), not the engine's catalogue.

use super::reference::Model;
use super::{Checker, Facts, Violation};
use rockhound_engine::EntityType;
use serde_json::Value;
use std::collections::BTreeMap;

/// The types an entity of `entity_type` references as parents.
fn parents(entity_type: EntityType) -> &'static [EntityType] {
    use EntityType as T;
    match entity_type {
        T::FindLog | T::CaptureSession => &[T::FieldSession],
        T::RawCapture => &[T::CaptureSession],
        T::ProcessedCapture => &[T::RawCapture],
        T::Specimen => &[T::FindLog, T::ProcessedCapture],
        T::Export => &[T::CollectionGroup],
        T::FieldSession | T::StorageLocation | T::CollectionGroup | T::Tag | T::AnalyticsCache => {
            &[]
        }
    }
}

/// Runs the checker.
pub fn check(facts: &Facts<'_>) -> Vec<Violation> {
    let mut model = Model::new(&facts.config);
    let mut owners: BTreeMap<(EntityType, String), &str> = BTreeMap::new();
    let mut violations = Vec::new();
    for (line, user, row) in &facts.commits {
        let key = (row.entity_type, row.entity_id.0.clone());
        let existed = model.entities.contains_key(&key);
        model.feed(row);
        // The owner is the user whose write created it (a forged write of another user is
        // logged under the forger, and refused).
        if !existed && model.entities.contains_key(&key) {
            owners.insert(key.clone(), user);
        }
        let Some(entity) = model.entities.get(&key) else {
            continue;
        };
        let mut broken = Vec::new();
        if entity.deleted {
            // No live entity may still name it.
            for ((child_type, child_id), child) in &model.entities {
                if child.deleted {
                    continue;
                }
                let field = format!("{}_id", row.entity_type.as_str());
                if parents(*child_type).contains(&row.entity_type)
                    && child.fields.get(&field) == Some(&Value::String(row.entity_id.0.clone()))
                {
                    broken.push(format!(
                        "deleting it orphaned the live {child_type} {child_id}"
                    ));
                }
            }
        } else {
            for parent in parents(row.entity_type) {
                let field = format!("{}_id", parent.as_str());
                let Some(Value::String(parent_id)) = entity.fields.get(&field) else {
                    continue;
                };
                let parent_key = (*parent, parent_id.clone());
                match model.entities.get(&parent_key) {
                    None => broken.push(format!("{field} names {parent_id}, which does not exist")),
                    Some(p) if p.deleted => {
                        broken.push(format!("{field} names {parent_id}, which is deleted"));
                    }
                    Some(_) if owners.get(&parent_key).is_some_and(|o| o != user) => {
                        broken.push(format!("{field} names {parent_id} of another user"));
                    }
                    Some(_) => {}
                }
            }
        }
        for why in broken {
            violations.push(facts.violation(
                Checker::Referential,
                *line,
                format!(
                    "after commit {} of {user} ({} {}): {why}",
                    row.seq, row.entity_type, row.entity_id
                ),
                &[*line],
            ));
        }
    }
    violations
}
