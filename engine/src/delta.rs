//! Field-level deltas between two versions of an entity, as RFC 7396 JSON merge patches.
//!
//! `diff(original, modified)` computes the patch an update op carries; `apply` (RFC 7396's
//! algorithm, from the `json-patch` crate) replays it. Merge patches cannot say "set this
//! field to null": `null` means "remove". Entities therefore treat a null field and an
//! absent field as the same thing, and `diff` emits `null` only for removals.

use serde_json::{Map, Value};
use std::collections::BTreeSet;

/// The merge patch that turns `original` into `modified`.
///
/// Objects are compared member by member and nested objects recursively; anything else
/// (arrays, scalars, a change of type) is replaced whole. Equal inputs give `{}`.
pub fn diff(original: &Value, modified: &Value) -> Value {
    match (original, modified) {
        (Value::Object(before), Value::Object(after)) => Value::Object(diff_objects(before, after)),
        _ => modified.clone(),
    }
}

fn diff_objects(before: &Map<String, Value>, after: &Map<String, Value>) -> Map<String, Value> {
    let mut patch = Map::new();
    for (key, old) in before {
        if !after.contains_key(key) && !old.is_null() {
            patch.insert(key.clone(), Value::Null);
        }
    }
    for (key, new) in after {
        match (before.get(key), new) {
            (Some(old), new) if old == new => {}
            (None, Value::Null) => {}
            (Some(Value::Object(old)), Value::Object(new)) => {
                let nested = diff_objects(old, new);
                if !nested.is_empty() {
                    patch.insert(key.clone(), Value::Object(nested));
                }
            }
            (_, new) => {
                patch.insert(key.clone(), new.clone());
            }
        }
    }
    patch
}

/// Applies an RFC 7396 merge patch to `target` in place.
pub fn apply(target: &mut Value, patch: &Value) {
    json_patch::merge(target, patch);
}

/// `original` with `patch` applied, leaving `original` untouched.
pub fn patched(original: &Value, patch: &Value) -> Value {
    let mut result = original.clone();
    apply(&mut result, patch);
    result
}

/// The top-level fields a patch touches (the fields an update changes).
pub fn changed_fields(patch: &Value) -> BTreeSet<String> {
    patch
        .as_object()
        .map(|fields| fields.keys().cloned().collect())
        .unwrap_or_default()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    /// Every example of RFC 7396 Appendix A: (target, patch, result).
    #[test]
    fn rfc7396_appendix_a_examples_apply() {
        let cases = [
            (json!({"a":"b"}), json!({"a":"c"}), json!({"a":"c"})),
            (json!({"a":"b"}), json!({"b":"c"}), json!({"a":"b","b":"c"})),
            (json!({"a":"b"}), json!({"a":null}), json!({})),
            (
                json!({"a":"b","b":"c"}),
                json!({"a":null}),
                json!({"b":"c"}),
            ),
            (json!({"a":["b"]}), json!({"a":"c"}), json!({"a":"c"})),
            (json!({"a":"c"}), json!({"a":["b"]}), json!({"a":["b"]})),
            (
                json!({"a":{"b":"c"}}),
                json!({"a":{"b":"d","c":null}}),
                json!({"a":{"b":"d"}}),
            ),
            (json!({"a":[{"b":"c"}]}), json!({"a":[1]}), json!({"a":[1]})),
            (json!(["a", "b"]), json!(["c", "d"]), json!(["c", "d"])),
            (json!({"a":"b"}), json!(["c"]), json!(["c"])),
            (json!({"a":"foo"}), json!(null), json!(null)),
            (json!({"a":"foo"}), json!("bar"), json!("bar")),
            (json!({"e":null}), json!({"a":1}), json!({"e":null,"a":1})),
            (json!([1, 2]), json!({"a":"b","c":null}), json!({"a":"b"})),
            (
                json!({}),
                json!({"a":{"bb":{"ccc":null}}}),
                json!({"a":{"bb":{}}}),
            ),
        ];
        for (target, patch, expected) in cases {
            assert_eq!(patched(&target, &patch), expected, "{target} + {patch}");
        }
    }

    /// The worked example of RFC 7396 §3.
    #[test]
    fn rfc7396_section_3_example_applies_and_diffs() {
        let target = json!({
            "title": "Goodbye!",
            "author": {"givenName": "John", "familyName": "Doe"},
            "tags": ["example", "sample"],
            "content": "This will be unchanged"
        });
        let patch = json!({
            "title": "Hello!",
            "phoneNumber": "+01-123-456-7890",
            "author": {"familyName": null},
            "tags": ["example"]
        });
        let expected = json!({
            "title": "Hello!",
            "author": {"givenName": "John"},
            "tags": ["example"],
            "content": "This will be unchanged",
            "phoneNumber": "+01-123-456-7890"
        });
        assert_eq!(patched(&target, &patch), expected);
        assert_eq!(diff(&target, &expected), patch);
    }

    #[test]
    fn equal_entities_diff_to_an_empty_patch() {
        let entity = json!({"id": "s-1", "mineral": "quartz", "size": {"mm": 4}});
        assert_eq!(diff(&entity, &entity), json!({}));
    }

    #[test]
    fn changed_fields_are_the_top_level_keys() {
        let fields = changed_fields(&json!({"a": 1, "b": {"c": null}}));
        assert_eq!(fields.into_iter().collect::<Vec<_>>(), ["a", "b"]);
    }

    /// JSON values without nulls as object members (null there means "absent").
    pub(crate) fn entity_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            any::<bool>().prop_map(Value::Bool),
            (-1000i64..1000).prop_map(|n| json!(n)),
            "[a-z]{0,6}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[a-e]", inner, 0..5)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn entity_object() -> impl Strategy<Value = Value> {
        prop::collection::btree_map("[a-f]", entity_value(), 0..6)
            .prop_map(|m| Value::Object(m.into_iter().collect()))
    }

    proptest! {
        #[test]
        fn applying_the_diff_reproduces_the_modified_entity(
            original in entity_object(),
            modified in entity_object(),
        ) {
            let patch = diff(&original, &modified);
            prop_assert_eq!(patched(&original, &patch), modified);
        }

        #[test]
        fn a_diff_names_only_fields_that_changed(
            original in entity_object(),
            modified in entity_object(),
        ) {
            for field in changed_fields(&diff(&original, &modified)) {
                prop_assert_ne!(original.get(&field), modified.get(&field));
            }
        }
    }
}
