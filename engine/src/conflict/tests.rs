//! The decision table, cell by cell, and the properties every strategy keeps.

use super::Strategy;
use super::*;
use proptest::prelude::{Strategy as _, prop, prop_assert, prop_assert_eq, prop_oneof, proptest};
use serde_json::json;

const T0: u64 = 1_760_000_000_000;

fn device(name: &str) -> DeviceId {
    DeviceId(name.to_owned())
}

/// Creates `fields` at version 1 by device `a` at `T0`.
fn created(fields: Value) -> ServerEntity {
    let a = device("a");
    let write = Write {
        kind: OpKind::Create,
        base_version: 0,
        payload: &fields,
        timestamp_ms: Millis(T0),
        device_id: &a,
    };
    assert_eq!(detect(None, &write), Detection::Clean);
    commit(None, &apply_clean(None, &write), &write).unwrap()
}

/// Applies `write` with `strategy` the way the server does; returns the next entity.
fn run(strategy: Strategy, server: &ServerEntity, write: &Write<'_>) -> (Decision, ServerEntity) {
    let decision = match detect(Some(server), write) {
        Detection::Clean => apply_clean(Some(server), write),
        Detection::Conflict(case) => resolve(strategy, case, server, write),
        Detection::Invalid(invalid) => panic!("unexpected invalid write: {invalid}"),
    };
    let next = commit(Some(server), &decision, write).unwrap_or_else(|| server.clone());
    (decision, next)
}

fn update<'a>(
    payload: &'a Value,
    base_version: u64,
    at_ms: u64,
    device_id: &'a DeviceId,
) -> Write<'a> {
    Write {
        kind: OpKind::Update,
        base_version,
        payload,
        timestamp_ms: Millis(T0 + at_ms),
        device_id,
    }
}

fn delete(base_version: u64, at_ms: u64, device_id: &DeviceId) -> Write<'_> {
    Write {
        kind: OpKind::Delete,
        base_version,
        payload: &Value::Null,
        timestamp_ms: Millis(T0 + at_ms),
        device_id,
    }
}

/// Version 2: device `a` changed `name` at T0+10 s. Returns the entity after that update.
fn concurrently_edited() -> ServerEntity {
    let base = created(json!({"id": "s", "name": "quartz", "notes": "", "tags": ["x"]}));
    let a = device("a");
    let patch = json!({"name": "smoky quartz", "tags": ["x", "y"]});
    run(Strategy::Manual, &base, &update(&patch, 1, 10_000, &a)).1
}

fn fields_of(decision: &Decision) -> Value {
    match decision {
        Decision::Write { fields, .. } => Value::Object(fields.clone()),
        other => panic!("expected a write, got {other:?}"),
    }
}

#[test]
fn detection_covers_every_case() {
    let server = concurrently_edited();
    let b = device("b");
    let patch = json!({"notes": "n"});
    let create = json!({"id": "s"});
    let mut tombstone = server.clone();
    tombstone.deleted = true;
    let create_write = Write {
        kind: OpKind::Create,
        base_version: 0,
        payload: &create,
        timestamp_ms: Millis(T0),
        device_id: &b,
    };
    assert_eq!(detect(None, &create_write), Detection::Clean);
    assert_eq!(
        detect(None, &update(&patch, 1, 0, &b)),
        Detection::Invalid(Invalid::NotFound)
    );
    assert_eq!(
        detect(Some(&server), &update(&patch, 2, 0, &b)),
        Detection::Clean
    );
    assert_eq!(
        detect(Some(&server), &update(&patch, 3, 0, &b)),
        Detection::Invalid(Invalid::VersionAhead)
    );
    assert_eq!(
        detect(Some(&server), &update(&patch, 1, 0, &b)),
        Detection::Conflict(Case::UpdateUpdate)
    );
    assert_eq!(
        detect(Some(&server), &delete(1, 0, &b)),
        Detection::Conflict(Case::DeleteUpdate)
    );
    assert_eq!(
        detect(Some(&server), &create_write),
        Detection::Conflict(Case::CreateExisting)
    );
    assert_eq!(
        detect(Some(&tombstone), &update(&patch, 2, 0, &b)),
        Detection::Conflict(Case::UpdateDelete)
    );
    assert_eq!(
        detect(Some(&tombstone), &delete(2, 0, &b)),
        Detection::Conflict(Case::DeleteDelete)
    );
    assert_eq!(
        detect(Some(&tombstone), &create_write),
        Detection::Invalid(Invalid::CreateDeleted)
    );
}

#[test]
fn update_versus_update_under_each_strategy() {
    let server = concurrently_edited();
    let b = device("b");
    // Device b, which saw version 1, renames the specimen and adds notes.
    let patch = json!({"name": "citrine", "notes": "found by the creek"});
    let later = update(&patch, 1, 20_000, &b);
    let earlier = update(&patch, 1, 5_000, &b);

    let client = fields_of(&resolve(
        Strategy::ClientWins,
        Case::UpdateUpdate,
        &server,
        &earlier,
    ));
    assert_eq!(client["name"], "citrine");
    assert_eq!(
        client["tags"],
        json!(["x", "y"]),
        "the server's other changes survive"
    );

    assert_eq!(
        resolve(Strategy::ServerWins, Case::UpdateUpdate, &server, &later),
        Decision::KeepServer
    );

    assert_eq!(
        fields_of(&resolve(
            Strategy::LatestTimestamp,
            Case::UpdateUpdate,
            &server,
            &later
        ))["name"],
        "citrine"
    );
    assert_eq!(
        resolve(
            Strategy::LatestTimestamp,
            Case::UpdateUpdate,
            &server,
            &earlier
        ),
        Decision::KeepServer
    );

    // field_level: `notes` was not touched by the server, so it applies even when older;
    // `name` was, so it goes to the later timestamp.
    let older = fields_of(&resolve(
        Strategy::FieldLevel,
        Case::UpdateUpdate,
        &server,
        &earlier,
    ));
    assert_eq!(
        (older["name"].clone(), older["notes"].clone()),
        (json!("smoky quartz"), json!("found by the creek"))
    );
    let newer = fields_of(&resolve(
        Strategy::FieldLevel,
        Case::UpdateUpdate,
        &server,
        &later,
    ));
    assert_eq!(newer["name"], "citrine");

    assert_eq!(
        resolve(Strategy::Manual, Case::UpdateUpdate, &server, &later),
        Decision::Manual
    );
}

#[test]
fn merge_unions_arrays_changed_on_both_sides() {
    let server = concurrently_edited();
    let b = device("b");
    let patch = json!({"tags": ["x", "z"]});
    let merged = fields_of(&resolve(
        Strategy::Merge,
        Case::UpdateUpdate,
        &server,
        &update(&patch, 1, 1, &b),
    ));
    assert_eq!(merged["tags"], json!(["x", "y", "z"]));
    // Under field_level the same older write loses the whole array.
    assert_eq!(
        resolve(
            Strategy::FieldLevel,
            Case::UpdateUpdate,
            &server,
            &update(&patch, 1, 1, &b)
        ),
        Decision::KeepServer
    );
}

#[test]
fn an_update_never_resurrects_a_deleted_entity_automatically() {
    let server = concurrently_edited();
    let a = device("a");
    let (_, tombstone) = run(Strategy::ClientWins, &server, &delete(2, 30_000, &a));
    assert!(tombstone.deleted);
    let b = device("b");
    let patch = json!({"name": "amethyst"});
    let write = update(&patch, 2, 90_000, &b);
    for strategy in Strategy::ALL {
        let decision = resolve(strategy, Case::UpdateDelete, &tombstone, &write);
        let expected = if strategy == Strategy::Manual {
            Decision::Manual
        } else {
            Decision::KeepServer
        };
        assert_eq!(decision, expected, "{strategy}");
    }
}

#[test]
fn delete_versus_update_under_each_strategy() {
    let server = concurrently_edited();
    let b = device("b");
    let later = delete(1, 20_000, &b);
    let earlier = delete(1, 5_000, &b);
    let table = [
        (Strategy::ClientWins, Decision::Delete, Decision::Delete),
        (
            Strategy::ServerWins,
            Decision::KeepServer,
            Decision::KeepServer,
        ),
        (
            Strategy::LatestTimestamp,
            Decision::Delete,
            Decision::KeepServer,
        ),
        (Strategy::FieldLevel, Decision::Delete, Decision::KeepServer),
        (Strategy::Merge, Decision::KeepServer, Decision::KeepServer),
        (Strategy::Manual, Decision::Manual, Decision::Manual),
    ];
    for (strategy, when_later, when_earlier) in table {
        assert_eq!(
            resolve(strategy, Case::DeleteUpdate, &server, &later),
            when_later,
            "{strategy} later"
        );
        assert_eq!(
            resolve(strategy, Case::DeleteUpdate, &server, &earlier),
            when_earlier,
            "{strategy} earlier"
        );
    }
}

#[test]
fn delete_versus_delete_is_already_done_under_every_strategy() {
    let server = concurrently_edited();
    let a = device("a");
    let (_, tombstone) = run(Strategy::ClientWins, &server, &delete(2, 1, &a));
    for strategy in Strategy::ALL {
        assert_eq!(
            resolve(strategy, Case::DeleteDelete, &tombstone, &delete(2, 2, &a)),
            Decision::AlreadyDone
        );
    }
}

#[test]
fn equal_timestamps_break_ties_by_device_id_the_same_way_from_both_sides() {
    let server = concurrently_edited(); // last written by device "a" at T0 + 10 s
    let patch = json!({"name": "jasper"});
    let (b, zero) = (device("b"), device("0"));
    assert!(matches!(
        resolve(
            Strategy::LatestTimestamp,
            Case::UpdateUpdate,
            &server,
            &update(&patch, 1, 10_000, &b)
        ),
        Decision::Write { .. }
    ));
    assert_eq!(
        resolve(
            Strategy::LatestTimestamp,
            Case::UpdateUpdate,
            &server,
            &update(&patch, 1, 10_000, &zero)
        ),
        Decision::KeepServer
    );
}

#[test]
fn commit_bumps_the_version_and_stamps_only_changed_fields() {
    let server = concurrently_edited();
    assert_eq!(server.version, 2);
    assert_eq!(server.field_stamps["name"].version, 2);
    assert_eq!(server.field_stamps["notes"].version, 1);
    assert_eq!(server.last_write.device_id, device("a"));
}

fn scalar() -> impl proptest::strategy::Strategy<Value = Value> {
    prop_oneof![
        (0i64..5).prop_map(|n| json!(n)),
        "[a-c]{1,2}".prop_map(Value::String)
    ]
}

fn patch_over(fields: &'static [&'static str]) -> impl proptest::strategy::Strategy<Value = Value> {
    prop::collection::btree_map(prop::sample::select(fields), scalar(), 1..4)
        .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()))
}

fn any_strategy() -> impl proptest::strategy::Strategy<Value = Strategy> {
    prop::sample::select(Strategy::ALL.to_vec())
}

proptest! {
    #[test]
    fn every_strategy_is_deterministic(
        strategy in any_strategy(),
        server_patch in patch_over(&["a", "b", "c"]),
        client_patch in patch_over(&["a", "b", "c"]),
        at_ms in 0u64..20,
    ) {
        let base = created(json!({"id": "e", "a": 0, "b": 0, "c": 0}));
        let x = device("x");
        let server = run(Strategy::Manual, &base, &update(&server_patch, 1, 10, &x)).1;
        let y = device("y");
        let write = update(&client_patch, 1, at_ms, &y);
        prop_assert_eq!(
            resolve(strategy, Case::UpdateUpdate, &server, &write),
            resolve(strategy, Case::UpdateUpdate, &server.clone(), &write)
        );
    }

    #[test]
    fn field_level_merges_disjoint_changes_the_same_whichever_side_is_first(
        x_patch in patch_over(&["a", "b"]),
        y_patch in patch_over(&["c", "d"]),
        x_at in 0u64..10,
        y_at in 0u64..10,
    ) {
        let base = created(json!({"id": "e", "a": 0, "b": 0, "c": 0, "d": 0}));
        let (x, y) = (device("x"), device("y"));
        let x_write = update(&x_patch, 1, x_at, &x);
        let y_write = update(&y_patch, 1, y_at, &y);
        let x_first = run(Strategy::FieldLevel, &run(Strategy::FieldLevel, &base, &x_write).1, &y_write).1;
        let y_first = run(Strategy::FieldLevel, &run(Strategy::FieldLevel, &base, &y_write).1, &x_write).1;
        prop_assert_eq!(&x_first.fields, &y_first.fields);
        let mut both = base.to_value();
        delta::apply(&mut both, &x_patch);
        delta::apply(&mut both, &y_patch);
        prop_assert_eq!(x_first.to_value(), both);
    }

    #[test]
    fn field_level_gives_overlapping_fields_to_the_later_write_whichever_side_is_first(
        x_patch in patch_over(&["a", "b", "c"]),
        y_patch in patch_over(&["a", "b", "c"]),
        x_at in 0u64..10,
        y_at in 0u64..10,
    ) {
        let base = created(json!({"id": "e", "a": 0, "b": 0, "c": 0}));
        let (x, y) = (device("x"), device("y"));
        let x_write = update(&x_patch, 1, x_at, &x);
        let y_write = update(&y_patch, 1, y_at, &y);
        let x_first = run(Strategy::FieldLevel, &run(Strategy::FieldLevel, &base, &x_write).1, &y_write).1;
        let y_first = run(Strategy::FieldLevel, &run(Strategy::FieldLevel, &base, &y_write).1, &x_write).1;
        prop_assert_eq!(&x_first.fields, &y_first.fields);
        // y wins ties on equal timestamps because "y" > "x".
        let y_is_later = (y_at, "y") > (x_at, "x");
        for field in ["a", "b", "c"] {
            let expected = match (x_patch.get(field), y_patch.get(field)) {
                (Some(xv), Some(yv)) => if y_is_later { yv } else { xv },
                (Some(v), None) | (None, Some(v)) => v,
                (None, None) => &base.fields[field],
            };
            prop_assert_eq!(&x_first.fields[field], expected);
        }
    }

    #[test]
    fn merge_is_idempotent(
        server_tags in prop::collection::vec(0u8..6, 0..5),
        client_tags in prop::collection::vec(0u8..6, 0..5),
        client_patch in patch_over(&["a", "b"]),
        at_ms in 0u64..20,
    ) {
        let base = created(json!({"id": "e", "a": 0, "b": 0, "tags": []}));
        let x = device("x");
        let server_patch = json!({"tags": server_tags, "a": 9});
        let server = run(Strategy::Merge, &base, &update(&server_patch, 1, 10, &x)).1;
        let mut patch = client_patch;
        patch["tags"] = json!(client_tags);
        let y = device("y");
        let write = update(&patch, 1, at_ms, &y);
        let once = run(Strategy::Merge, &server, &write).1;
        let twice = run(Strategy::Merge, &once, &write).1;
        prop_assert_eq!(once.to_value(), twice.to_value());
        // Additive: nothing either side had in its tags is lost.
        let tags = once.fields["tags"].as_array().unwrap().clone();
        for tag in server_tags.iter().chain(client_tags.iter()) {
            prop_assert!(tags.contains(&json!(tag)));
        }
    }
}

#[test]
fn a_second_create_of_an_existing_id_is_decided_like_a_concurrent_update() {
    let server = concurrently_edited(); // name "smoky quartz" by "a" at T0 + 10 s
    let b = device("b");
    let payload = json!({"id": "s", "name": "rose quartz", "colour": "pink"});
    let create = |at_ms: u64| Write {
        kind: OpKind::Create,
        base_version: 0,
        payload: &payload,
        timestamp_ms: Millis(T0 + at_ms),
        device_id: &b,
    };
    // Every server field counts as changed since base version 0, so each goes to the later
    // write; `colour`, which the server never had, applies either way.
    let earlier = fields_of(&resolve(
        Strategy::FieldLevel,
        Case::CreateExisting,
        &server,
        &create(1),
    ));
    assert_eq!(
        (earlier["name"].clone(), earlier["colour"].clone()),
        (json!("smoky quartz"), json!("pink"))
    );
    let later = fields_of(&resolve(
        Strategy::FieldLevel,
        Case::CreateExisting,
        &server,
        &create(60_000),
    ));
    assert_eq!(later["name"], "rose quartz");
    assert_eq!(later["id"], "s", "the id is never part of the patch");
    assert_eq!(
        resolve(
            Strategy::ServerWins,
            Case::CreateExisting,
            &server,
            &create(60_000)
        ),
        Decision::KeepServer
    );
}
