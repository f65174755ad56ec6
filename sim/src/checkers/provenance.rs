//! Write provenance: every field value the server and every replica end with comes from a
//! write somebody made to that entity: a create or update step's fields (the workload's
//! edits are steps too), a person's custom resolution, or a hand-built batch (`wrote`). A
//! field nobody wrote never appears or changes.
//!
//! The writes are read from the steps and `wrote` lines, never from what the server logged
//! or what the coordinator sealed, so a server or client that invents, mixes up or
//! mangles values cannot vouch for them. Values combine as the strategies combine them:
//! an object may be assembled key by key (a merge patch), an array element by element (a
//! `merge` union), each part from some write to the same place.

use super::{Checker, Facts, Violation};
use crate::spec::Action;
use crate::trace::TraceEvent;
use rockhound_engine::EntityType;
use rockhound_engine::ids::EntityId;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};

/// Every write to one entity: (trace line, the fields written).
type Writes<'a> = Vec<(usize, &'a Map<String, Value>)>;

/// Runs the checker.
pub fn check(facts: &Facts<'_>) -> Vec<Violation> {
    let written = writes(facts);
    let none = Vec::new();
    let mut violations = Vec::new();
    let server = facts
        .entities
        .values()
        .map(|(line, _, snapshot)| ("the server".to_owned(), *line, *snapshot));
    let replicas = facts
        .final_devices
        .iter()
        .flat_map(|(device, (line, _, replica))| {
            replica
                .iter()
                .map(move |snapshot| (format!("{device}'s replica"), *line, snapshot))
        });
    for (holder, line, snapshot) in server.chain(replicas) {
        if snapshot.deleted {
            continue;
        }
        let key = (snapshot.entity_type, snapshot.entity_id.clone());
        let writes = written.get(&key).unwrap_or(&none);
        let Some(fields) = snapshot.entity.as_object() else {
            continue;
        };
        for (field, value) in fields {
            if field == "id" && value.as_str() == Some(snapshot.entity_id.0.as_str()) {
                continue;
            }
            let path = [field.as_str()];
            if let Some(bad) = unwritten(value, &path, writes) {
                let mut quoted = vec![line];
                quoted.extend(writes.iter().rev().take(3).map(|(l, _)| *l));
                violations.push(facts.violation(
                    Checker::Provenance,
                    line,
                    format!(
                        "{holder} holds {} {} {} = {bad}, which no write to it carried",
                        snapshot.entity_type,
                        snapshot.entity_id,
                        path.join(".")
                    ),
                    &quoted,
                ));
                break;
            }
        }
    }
    violations
}

/// Every write the trace shows, by entity.
fn writes<'a>(facts: &Facts<'a>) -> BTreeMap<(EntityType, EntityId), Writes<'a>> {
    let mut written: BTreeMap<(EntityType, EntityId), Writes<'a>> = BTreeMap::new();
    for (index, line) in facts.lines.iter().enumerate() {
        match &line.event {
            TraceEvent::Step {
                action:
                    Action::Create {
                        entity_type,
                        id,
                        fields,
                        ..
                    }
                    | Action::Update {
                        entity_type,
                        id,
                        fields,
                        ..
                    },
            } => written
                .entry((*entity_type, EntityId(id.clone())))
                .or_default()
                .push((index, fields)),
            TraceEvent::Wrote { writes } => {
                for (entity_type, entity_id, value) in writes {
                    // A write that is not an object sets no field (the server refuses it).
                    let Some(fields) = value.as_object() else {
                        continue;
                    };
                    written
                        .entry((*entity_type, entity_id.clone()))
                        .or_default()
                        .push((index, fields));
                }
            }
            _ => {}
        }
    }
    written
}

/// The part of `value` (at `path`) that no write carried, if any.
fn unwritten(value: &Value, path: &[&str], writes: &Writes<'_>) -> Option<Value> {
    let mut touched = false;
    for (_, write) in writes {
        match at(write, path) {
            Some(written) if written == value => return None,
            Some(_) => touched = true,
            None => {}
        }
    }
    if !touched {
        return Some(value.clone());
    }
    match value {
        Value::Object(fields) => fields.iter().find_map(|(key, inner)| {
            let mut deeper = path.to_vec();
            deeper.push(key);
            unwritten(inner, &deeper, writes)
        }),
        Value::Array(elements) => {
            // Every element any write put in this array, as canonical text (a set: merge
            // arrays run to thousands of elements).
            let known: BTreeSet<String> = writes
                .iter()
                .filter_map(|(_, write)| at(write, path).and_then(Value::as_array))
                .flatten()
                .map(Value::to_string)
                .collect();
            elements
                .iter()
                .find(|element| !known.contains(&element.to_string()))
                .cloned()
        }
        _ => Some(value.clone()),
    }
}

/// The value a write gave the field at `path`, if it gave one.
fn at<'v>(write: &'v Map<String, Value>, path: &[&str]) -> Option<&'v Value> {
    let (first, rest) = path.split_first()?;
    rest.iter()
        .try_fold(write.get(*first)?, |v, key| v.get(*key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn writes(values: &[Value]) -> Vec<Map<String, Value>> {
        values
            .iter()
            .map(|v| v.as_object().expect("an object").clone())
            .collect()
    }

    #[test]
    fn merged_values_pass_and_invented_parts_are_named() {
        let maps = writes(&[
            json!({"tools": ["hammer"], "site": {"name": "ridge"}}),
            json!({"tools": ["loupe", "chisel"], "site": {"depth_m": 3}}),
            json!({"note": "x"}),
        ]);
        let written: Writes<'_> = maps.iter().enumerate().collect();
        // A union of two writes' arrays, and an object merged from two patches.
        assert_eq!(
            unwritten(&json!(["hammer", "chisel", "loupe"]), &["tools"], &written),
            None
        );
        assert_eq!(
            unwritten(&json!({"name": "ridge", "depth_m": 3}), &["site"], &written),
            None
        );
        assert_eq!(unwritten(&json!("x"), &["note"], &written), None);
        // An element, a nested value, a scalar and a field that nobody wrote.
        assert_eq!(
            unwritten(&json!(["hammer", "saw"]), &["tools"], &written),
            Some(json!("saw"))
        );
        assert_eq!(
            unwritten(&json!({"name": "ridge", "depth_m": 4}), &["site"], &written),
            Some(json!(4))
        );
        assert_eq!(
            unwritten(&json!("y"), &["note"], &written),
            Some(json!("y"))
        );
        assert_eq!(
            unwritten(&json!([]), &["reviewed"], &written),
            Some(json!([]))
        );
    }
}
