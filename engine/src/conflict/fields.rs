//! Field-by-field decisions shared by `client_wins`, `latest_timestamp`, `field_level` and
//! `merge`.

use super::{Decision, ServerEntity, Write};
use crate::delta;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};

/// The server's fields with `patch` applied over them.
pub(super) fn overlay(server: &ServerEntity, patch: Map<String, Value>) -> Decision {
    let changed: BTreeSet<String> = patch.keys().cloned().collect();
    // A field the patch replaces outright (anything but an object, which merges) is not
    // copied only to be dropped.
    let kept = server
        .fields
        .iter()
        .filter(|(field, _)| patch.get(*field).is_none_or(Value::is_object))
        .map(|(field, value)| (field.clone(), value.clone()))
        .collect();
    let mut entity = Value::Object(kept);
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
                if let Some(union) = set_union(ours, theirs) {
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
/// once; `None` when the server already holds every client element.
///
/// Elements are compared by [`ItemKey`] in an ordered set of the *client's* elements, and the
/// server's are only looked up in it, borrowing their strings: the union costs
/// O(s log c + c log c) for s server and c client elements and allocates nothing per server
/// element. (A quadratic union, and then one that keyed every server element, let one user's
/// batch hold the server for seconds.)
fn set_union(server: &[Value], client: &[Value]) -> Option<Vec<Value>> {
    let mut missing: BTreeMap<ItemKey<'_>, usize> = BTreeMap::new();
    for (index, item) in client.iter().enumerate() {
        missing.entry(ItemKey::of(item)).or_insert(index);
    }
    for item in server {
        if missing.is_empty() {
            break;
        }
        missing.remove(&ItemKey::of(item));
    }
    if missing.is_empty() {
        return None;
    }
    let mut added: Vec<usize> = missing.into_values().collect();
    added.sort_unstable();
    let mut union = Vec::with_capacity(server.len() + added.len());
    union.extend_from_slice(server);
    union.extend(added.into_iter().map(|index| client[index].clone()));
    Some(union)
}

/// An array element as the union compares it: a string by its text, borrowed; anything else
/// by its JSON text. Equal values have equal keys, and a string never equals a non-string.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum ItemKey<'a> {
    Text(&'a str),
    Json(String),
}

impl<'a> ItemKey<'a> {
    fn of(item: &'a Value) -> ItemKey<'a> {
        match item {
            Value::String(text) => ItemKey::Text(text),
            other => ItemKey::Json(serde_json::to_string(other).unwrap_or_default()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The quadratic union this file used to compute: the reference for the fast one.
    fn naive_union(server: &[Value], client: &[Value]) -> Vec<Value> {
        let mut union = server.to_vec();
        for item in client {
            if !union.contains(item) {
                union.push(item.clone());
            }
        }
        union
    }

    fn item() -> impl Strategy<Value = Value> {
        prop_oneof![
            (0u8..6).prop_map(|n| Value::String(format!("s{n}"))),
            (0u8..6).prop_map(|n| serde_json::json!(n)),
            (0u8..3).prop_map(|n| serde_json::json!({ "k": n })),
            Just(Value::Null),
        ]
    }

    proptest! {
        #[test]
        fn the_union_equals_the_quadratic_reference(
            server in prop::collection::vec(item(), 0..12),
            client in prop::collection::vec(item(), 0..12),
        ) {
            let expected = naive_union(&server, &client);
            let union = set_union(&server, &client);
            prop_assert_eq!(union.is_none(), expected.len() == server.len());
            prop_assert_eq!(union.unwrap_or_else(|| server.clone()), expected);
        }
    }
}
