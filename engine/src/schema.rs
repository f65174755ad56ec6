//! Each entity type's fields: their types and ranges, checked on the client before an edit
//! is enqueued and on the server before an op is decided (the seed validates every entity
//! with a schema). docs/entities.md is generated from this table
//! ([`reference_markdown`]; a test keeps it current).
//!
//! The schemas are open: a field not listed is accepted as any JSON value (devices of a
//! newer version may write fields this one does not know). A listed field, when present
//! and not `null`, must have its type and range; `null` in an update removes it. Parent
//! references (`<parent>_id`) are listed too; whether they are required is the
//! dependency rule's (`EntityType::parents`), checked beside this one.

use crate::entity::EntityType;
use serde_json::{Map, Value};

/// The type of a field.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum FieldType {
    /// A string of at most this many characters.
    Text(usize),
    /// An integer within the range, inclusive.
    Integer(i64, i64),
    /// A number within the range, inclusive.
    Number(f64, f64),
    /// `true` or `false`.
    Bool,
    /// An array of at most this many strings, each of at most 200 characters.
    TextList(usize),
    /// One of these strings.
    OneOf(&'static [&'static str]),
    /// The id of an entity of this type (its parent).
    Reference(EntityType),
}

/// The longest string in a [`FieldType::TextList`].
const LIST_ITEM_CHARS_MAX: usize = 200;

/// One field of an entity type.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Field {
    /// Its name in the entity's JSON.
    pub name: &'static str,
    /// Its type and range.
    pub kind: FieldType,
    /// What it holds.
    pub meaning: &'static str,
}

const fn field(name: &'static str, kind: FieldType, meaning: &'static str) -> Field {
    Field {
        name,
        kind,
        meaning,
    }
}

const NAME: Field = field("name", FieldType::Text(200), "a name a person gives it");
const NOTE: Field = field("note", FieldType::Text(10_000), "free text");
const NOTES: Field = field("notes", FieldType::Text(10_000), "free text");
const MINERAL: Field = field("mineral", FieldType::Text(100), "the mineral, as named");
const MEMBERS: Field = field(
    "members",
    FieldType::TextList(100_000),
    "names or ids it gathers (merged as a set; the entity's size limit bounds it first)",
);

/// The fields of `entity_type`.
// Long on purpose: the schema table itself, one arm per entity type.
pub fn fields(entity_type: EntityType) -> &'static [Field] {
    use FieldType::{Bool, Integer, Number, OneOf, Reference, Text, TextList};
    match entity_type {
        EntityType::FieldSession => {
            const {
                &[
                    field("site", Text(200), "where the trip went"),
                    field("weather", Text(100), "the day's weather"),
                    field("tools", TextList(50), "tools taken along"),
                    field("started", Bool, "whether the trip has begun"),
                    NAME,
                    NOTES,
                ]
            }
        }
        EntityType::FindLog => {
            const {
                &[
                    field(
                        "field_session_id",
                        Reference(EntityType::FieldSession),
                        "the trip it was found on",
                    ),
                    MINERAL,
                    NOTE,
                    NOTES,
                ]
            }
        }
        EntityType::CaptureSession => {
            const {
                &[
                    field(
                        "field_session_id",
                        Reference(EntityType::FieldSession),
                        "the trip it belongs to",
                    ),
                    field("camera", Text(200), "the camera used"),
                    NOTES,
                ]
            }
        }
        EntityType::RawCapture => {
            const {
                &[
                    field(
                        "capture_session_id",
                        Reference(EntityType::CaptureSession),
                        "the session it was taken in",
                    ),
                    field("frames", Integer(1, 10_000), "frames captured"),
                ]
            }
        }
        EntityType::ProcessedCapture => {
            const {
                &[
                    field(
                        "raw_capture_id",
                        Reference(EntityType::RawCapture),
                        "the capture it was made from",
                    ),
                    field("filter", Text(200), "the processing applied"),
                ]
            }
        }
        EntityType::Specimen => {
            const {
                &[
                    field(
                        "find_log_id",
                        Reference(EntityType::FindLog),
                        "the find it came from",
                    ),
                    field(
                        "processed_capture_id",
                        Reference(EntityType::ProcessedCapture),
                        "the image it was identified from",
                    ),
                    MINERAL,
                    NAME,
                    field(
                        "weight_g",
                        Number(0.0, 1_000_000.0),
                        "weight in grams, up to a tonne",
                    ),
                    NOTE,
                ]
            }
        }
        EntityType::StorageLocation => {
            const {
                &[
                    NAME,
                    field("cabinet", Text(100), "the cabinet, as labelled"),
                    field("drawer", Integer(0, 10_000), "the drawer's number"),
                ]
            }
        }
        EntityType::CollectionGroup => const { &[field("title", Text(200), "its title"), MEMBERS] },
        EntityType::Tag => const { &[field("label", Text(100), "the tag's text"), MEMBERS, NAME] },
        EntityType::Export => {
            const {
                &[
                    field(
                        "collection_group_id",
                        Reference(EntityType::CollectionGroup),
                        "the collection exported",
                    ),
                    field("format", OneOf(&["csv", "json", "pdf"]), "the file format"),
                    NAME,
                ]
            }
        }
        EntityType::AnalyticsCache => {
            const {
                &[
                    field("metric", Text(100), "the figure's name"),
                    field("value", Number(-1e15, 1e15), "the figure"),
                ]
            }
        }
    }
}

/// A field whose value breaks its type or range.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("field {field} must be {expected}, not {found}")]
pub struct SchemaProblem {
    /// The field.
    pub field: String,
    /// What its type and range allow.
    pub expected: String,
    /// What was there.
    pub found: String,
}

/// Checks every listed field of `entity_type` present in `values` (a create's entity or an
/// update's patch); `null` passes (an update removes the field with it).
pub fn check(entity_type: EntityType, values: &Map<String, Value>) -> Result<(), SchemaProblem> {
    for field in fields(entity_type) {
        let Some(value) = values.get(field.name) else {
            continue;
        };
        if value.is_null() || fits(field.kind, value) {
            continue;
        }
        let mut found = value.to_string();
        if found.chars().count() > 40 {
            found = format!("{}…", found.chars().take(40).collect::<String>());
        }
        return Err(SchemaProblem {
            field: field.name.to_owned(),
            expected: describe(field.kind),
            found,
        });
    }
    Ok(())
}

fn fits(kind: FieldType, value: &Value) -> bool {
    let chars = |s: &str, max: usize| s.chars().count() <= max;
    match kind {
        FieldType::Text(max) => value.as_str().is_some_and(|s| chars(s, max)),
        FieldType::Integer(min, max) => value.as_i64().is_some_and(|n| (min..=max).contains(&n)),
        FieldType::Number(min, max) => value
            .as_f64()
            .is_some_and(|n| n.is_finite() && (min..=max).contains(&n)),
        FieldType::Bool => value.is_boolean(),
        FieldType::TextList(max) => value.as_array().is_some_and(|items| {
            items.len() <= max
                && items
                    .iter()
                    .all(|i| i.as_str().is_some_and(|s| chars(s, LIST_ITEM_CHARS_MAX)))
        }),
        FieldType::OneOf(choices) => value.as_str().is_some_and(|s| choices.contains(&s)),
        // The id rule is checked with the parent references (`op::check_payload`).
        FieldType::Reference(_) => value.is_string(),
    }
}

/// The type and range, as the reference page and the errors say them.
pub fn describe(kind: FieldType) -> String {
    match kind {
        FieldType::Text(max) => format!("text of at most {max} characters"),
        FieldType::Integer(min, max) => format!("an integer from {min} to {max}"),
        FieldType::Number(min, max) => format!("a number from {min} to {max}"),
        FieldType::Bool => "true or false".to_owned(),
        FieldType::TextList(max) => {
            format!("a list of at most {max} texts of at most {LIST_ITEM_CHARS_MAX} characters")
        }
        FieldType::OneOf(choices) => format!("one of {}", choices.join(", ")),
        FieldType::Reference(parent) => format!("the id of a {}", parent.as_str()),
    }
}

/// docs/entities.md: every type with its priority, parents, default strategy and fields.
pub fn reference_markdown() -> String {
    let mut page = String::from(
        "# Entity reference\n\n\
         Generated from `engine/src/schema.rs` and `engine/src/entity.rs` (the test \
         `the_entity_reference_page_is_current` fails when this page is stale; run it with \
         `ROCKHOUND_WRITE_DOCS=1` to rewrite it).\n\n\
         Every entity is a JSON object with an `id`. The fields below are checked on the \
         device before an edit is queued (`EnqueueError`) and on the server before an op is \
         decided (rejected `invalid_entity`): when present and not `null`, a field must have \
         its type and range. Fields not listed are accepted as any JSON value (the schemas \
         are open, so a newer device's fields pass). A create names its parents: every one \
         listed, or for a specimen at least one.\n\n\
         | type | priority | parents | default strategy |\n|---|---|---|---|\n",
    );
    for entity_type in EntityType::ALL {
        let parents: Vec<String> = entity_type
            .parents()
            .iter()
            .map(|p| format!("`{}`", p.as_str()))
            .collect();
        page.push_str(&format!(
            "| `{}` | {} | {} | `{}` |\n",
            entity_type.as_str(),
            entity_type.default_priority().get(),
            if parents.is_empty() {
                "—".to_owned()
            } else {
                parents.join(", ")
            },
            entity_type.default_strategy().as_str(),
        ));
    }
    page.push_str(
        "\nDeletes, and edits marked blocking, go at priority 0 whatever the type \
         (docs/client.md).\n",
    );
    for entity_type in EntityType::ALL {
        page.push_str(&format!(
            "\n## `{}`\n\n| field | type | meaning |\n|---|---|---|\n",
            entity_type.as_str()
        ));
        for field in fields(entity_type) {
            page.push_str(&format!(
                "| `{}` | {} | {} |\n",
                field.name,
                describe(field.kind),
                field.meaning
            ));
        }
    }
    page
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(value: Value) -> Map<String, Value> {
        value.as_object().cloned().expect("an object")
    }

    #[test]
    fn a_field_of_the_wrong_type_or_range_is_named_and_others_pass() {
        let bad = check(EntityType::Specimen, &object(json!({"weight_g": "heavy"}))).unwrap_err();
        assert_eq!(bad.field, "weight_g");
        assert!(
            bad.to_string().contains("a number from 0 to 1000000"),
            "{bad}"
        );
        for (entity_type, value, ok) in [
            (EntityType::Specimen, json!({"weight_g": 412.5}), true),
            (EntityType::Specimen, json!({"weight_g": -1}), false),
            (EntityType::Specimen, json!({"weight_g": 1_000_001}), false),
            (EntityType::Specimen, json!({"weight_g": null}), true),
            (
                EntityType::Specimen,
                json!({"colour": {"any": "thing"}}),
                true,
            ),
            (EntityType::RawCapture, json!({"frames": 0}), false),
            (EntityType::RawCapture, json!({"frames": 1.5}), false),
            (EntityType::RawCapture, json!({"frames": i64::MAX}), false),
            (EntityType::Export, json!({"format": "csv"}), true),
            (EntityType::Export, json!({"format": "xls"}), false),
            (EntityType::FieldSession, json!({"started": "yes"}), false),
            (
                EntityType::FieldSession,
                json!({"tools": ["hammer", 3]}),
                false,
            ),
            (EntityType::Tag, json!({"label": "x".repeat(101)}), false),
            (EntityType::Tag, json!({"label": "é".repeat(100)}), true),
            (
                EntityType::Tag,
                json!({"members": vec!["a"; 100_001]}),
                false,
            ),
            (
                EntityType::StorageLocation,
                json!({"cabinet": "oak", "drawer": 3}),
                true,
            ),
        ] {
            let result = check(entity_type, &object(value.clone()));
            assert_eq!(result.is_ok(), ok, "{entity_type:?} {value}: {result:?}");
        }
    }

    #[test]
    fn every_type_lists_its_parent_references() {
        for entity_type in EntityType::ALL {
            for parent in entity_type.parents() {
                let name = parent.reference_field();
                let listed = fields(entity_type)
                    .iter()
                    .find(|f| f.name == name)
                    .unwrap_or_else(|| panic!("{entity_type:?} lists {name}"));
                assert_eq!(listed.kind, FieldType::Reference(*parent));
            }
        }
    }

    #[test]
    fn the_entity_reference_page_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/entities.md");
        let page = reference_markdown();
        if std::env::var_os("ROCKHOUND_WRITE_DOCS").is_some() {
            std::fs::write(path, &page).expect("docs/entities.md is writable");
        }
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == page,
            "docs/entities.md is stale: ROCKHOUND_WRITE_DOCS=1 cargo test -p rockhound-engine \
             the_entity_reference_page_is_current"
        );
    }
}
