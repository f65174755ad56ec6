//! Field-by-field decisions shared by `client_wins`, `latest_timestamp`, `field_level` and
//! `merge`.

use super::{Decision, ServerEntity, Write};
use crate::delta;
use serde_json::{Map, Value};
use std::collections::BTreeSet;

/// The server's fields with `patch` applied over them.
pub(super) fn overlay(server: &ServerEntity, patch: Map<String, Value>) -> Decision {
    let changed: BTreeSet<String> = patch.keys().cloned().collect();
    let mut entity = server.to_value();
    delta::apply(&mut entity, &Value::Object(patch));
    let Value::Object(fields) = entity else {
        unreachable!("an object patched with an object stays an object")
    };
    Decision::Write { fields, changed }
}

/// `field_level` (and, with `union_arrays`, `merge`): each field the write changes applies
/// if the server has not changed it since the write's base version; a field changed on both
/// sides goes to the later device timestamp, or, for `merge`, becomes the set union when both
/// sides hold arrays.
pub(super) fn field_level(
    server: &ServerEntity,
    write: &Write<'_>,
    union_arrays: bool,
) -> Decision {
    let mut winners = Map::new();
    for (field, value) in write.patch() {
        let stamp = server.field_stamps.get(&field);
        let server_changed_it = stamp.is_some_and(|s| s.version > write.base_version);
        if !server_changed_it {
            winners.insert(field, value);
            continue;
        }
        match (server.fields.get(&field), &value) {
            (Some(Value::Array(ours)), Value::Array(theirs)) if union_arrays => {
                let union = set_union(ours, theirs);
                if union != *ours {
                    winners.insert(field, Value::Array(union));
                }
            }
            _ => {
                if write.is_later_than(stamp.expect("checked above")) {
                    winners.insert(field, value);
                }
            }
        }
    }
    if winners.is_empty() {
        return Decision::KeepServer;
    }
    overlay(server, winners)
}

/// The server's elements in their order, then the client's elements the server lacks, each
/// once. Elements are compared by their JSON text (equal values have equal text), kept in an
/// ordered set, so the union costs O(n log n) however the arrays are built: a quadratic union
/// let one user's batch hold the server for seconds.
fn set_union(server: &[Value], client: &[Value]) -> Vec<Value> {
    let text = |item: &Value| serde_json::to_string(item).unwrap_or_default();
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut union = Vec::with_capacity(server.len() + client.len());
    for item in server {
        seen.insert(text(item));
        union.push(item.clone());
    }
    for item in client {
        if seen.insert(text(item)) {
            union.push(item.clone());
        }
    }
    union
}
