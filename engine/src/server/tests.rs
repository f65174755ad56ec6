//! Every result status and error code of the server core, and the replay property.

use super::tables::Tables;
use super::wire::{ConflictStatus, HistoryAction, OpResult, OpStatus, Resolution, ResolveRequest};
use super::*;
use crate::config::SyncConfig;
use crate::conflict::Strategy;
use crate::entity::EntityType;
use crate::entity::Priority;
use crate::ids::{BatchId, IdempotencyKey, OpId};
use crate::ids::{ConflictId, DeviceId, EntityId, UserId};
use crate::op::{BATCH_OP_COUNT_MAX, Batch, Op, OpKind};
use crate::time::{DAY_MS, Millis};
use proptest::prelude::{
    ProptestConfig, TestCaseError, any, prop, prop_assert, prop_assert_eq, prop_oneof, proptest,
};
use proptest::strategy::Strategy as Gen;
use serde_json::Value;
use serde_json::json;

const NOW: Millis = Millis(1_760_000_000_000);

fn user(name: &str) -> UserId {
    UserId(name.to_owned())
}

fn op(
    n: u32,
    entity_type: EntityType,
    entity: &str,
    kind: OpKind,
    base_version: u64,
    payload: Value,
) -> Op {
    Op {
        op_id: OpId(format!("op-{n}")),
        idempotency_key: IdempotencyKey(format!("key-{n}")),
        entity_type,
        entity_id: EntityId(entity.to_owned()),
        kind,
        base_version,
        payload,
        client_timestamp_ms: Millis(NOW.0 + u64::from(n)),
        priority: entity_type.default_priority(),
        depends_on: vec![],
        created_at_ms: NOW,
        checksum: String::new(),
    }
    .sealed()
}

fn session(n: u32, id: &str) -> Op {
    op(
        n,
        EntityType::FieldSession,
        id,
        OpKind::Create,
        0,
        json!({"id": id, "name": "creek"}),
    )
}

fn send(server: &mut Server, who: &str, device: &str, ops: Vec<Op>) -> Vec<OpResult> {
    let batch = Batch::new(
        BatchId(format!("b-{}", server.tables().seq)),
        DeviceId(device.to_owned()),
        ops,
    );
    server
        .handle_batch(&user(who), &batch, NOW)
        .unwrap()
        .results
}

fn statuses(results: &[OpResult]) -> Vec<(OpStatus, Option<&str>)> {
    results
        .iter()
        .map(|r| (r.status, r.reason.map(|r| r.as_str())))
        .collect()
}

#[test]
fn a_create_then_an_update_are_applied_with_versions() {
    let mut server = Server::new(SyncConfig::default());
    let update = op(
        2,
        EntityType::FieldSession,
        "fs",
        OpKind::Update,
        1,
        json!({"name": "ridge"}),
    );
    let results = send(&mut server, "ann", "phone", vec![session(1, "fs"), update]);
    assert_eq!(
        statuses(&results),
        [(OpStatus::Applied, None), (OpStatus::Applied, None)]
    );
    assert_eq!((results[0].version, results[1].version), (Some(1), Some(2)));
    let page = server.changes(&user("ann"), None, 0, 10, NOW).unwrap();
    assert_eq!(page.changes.len(), 1, "one entity, at its latest state");
    assert_eq!(page.changes[0].entity, json!({"id": "fs", "name": "ridge"}));
}

#[test]
fn a_replayed_op_is_a_duplicate_and_changes_nothing() {
    let mut server = Server::new(SyncConfig::default());
    let first = send(&mut server, "ann", "phone", vec![session(1, "fs")]);
    let entities_before = server.tables().entities.clone();
    let again = send(&mut server, "ann", "phone", vec![session(1, "fs")]);
    assert_eq!(again[0].status, OpStatus::Duplicate);
    assert_eq!(again[0].version, first[0].version);
    assert_eq!(server.tables().entities, entities_before);
    assert_eq!(
        server.tables().sync_queue[&(user("ann"), OpId::from("op-1"))].status,
        OpStatus::Applied
    );
}

#[test]
fn a_reused_key_with_different_content_is_rejected_and_not_applied() {
    let mut server = Server::new(SyncConfig::default());
    send(&mut server, "ann", "phone", vec![session(1, "fs")]);
    let mut other = session(1, "fs2");
    other.payload = json!({"id": "fs2"});
    let other = other.sealed();
    let results = send(&mut server, "ann", "phone", vec![other]);
    assert_eq!(
        statuses(&results),
        [(OpStatus::Rejected, Some("idempotency_key_reused"))]
    );
    assert!(
        !server
            .tables()
            .entities
            .contains_key(&(EntityType::FieldSession, EntityId::from("fs2")))
    );
}

#[test]
fn a_corrupted_op_is_rejected_and_its_good_copy_applies_later() {
    let mut server = Server::new(SyncConfig::default());
    let mut corrupted = session(1, "fs");
    corrupted.payload["name"] = json!("cr33k");
    let results = send(&mut server, "ann", "phone", vec![corrupted]);
    assert_eq!(
        statuses(&results),
        [(OpStatus::Rejected, Some("checksum_mismatch"))]
    );
    assert!(server.tables().entities.is_empty());
    let results = send(&mut server, "ann", "phone", vec![session(1, "fs")]);
    assert_eq!(statuses(&results), [(OpStatus::Applied, None)]);
}

#[test]
fn an_invalid_op_is_rejected_with_invalid_op() {
    let mut server = Server::new(SyncConfig::default());
    let bad = op(
        1,
        EntityType::FindLog,
        "f",
        OpKind::Create,
        0,
        json!({"id": "f"}),
    );
    assert_eq!(
        statuses(&send(&mut server, "ann", "phone", vec![bad])),
        [(OpStatus::Rejected, Some("invalid_op"))]
    );
}

#[test]
fn an_op_whose_field_breaks_the_schema_is_rejected_with_invalid_entity_and_changes_nothing() {
    let mut server = Server::new(SyncConfig::default());
    let off = op(
        1,
        EntityType::Tag,
        "t",
        OpKind::Create,
        0,
        json!({"id": "t", "label": 42}),
    );
    assert_eq!(
        statuses(&send(&mut server, "ann", "phone", vec![off])),
        [(OpStatus::Rejected, Some("invalid_entity"))]
    );
    assert!(server.tables().entities.is_empty());
    // The same entity, within its schema, is then created.
    let good = op(
        2,
        EntityType::Tag,
        "t",
        OpKind::Create,
        0,
        json!({"id": "t", "label": "quartz"}),
    );
    assert_eq!(
        statuses(&send(&mut server, "ann", "phone", vec![good])),
        [(OpStatus::Applied, None)]
    );
}

#[test]
fn an_op_older_than_the_key_retention_is_refused_as_expired() {
    let mut server = Server::new(SyncConfig::default());
    let mut old = session(1, "fs");
    old.created_at_ms = Millis(NOW.0 - server.config().idempotency_retention_ms() - 1);
    let old = old.sealed();
    assert_eq!(
        statuses(&send(&mut server, "ann", "phone", vec![old])),
        [(OpStatus::Rejected, Some("expired"))]
    );
}

#[test]
fn dependencies_block_when_missing_or_failed_and_pass_when_applied() {
    let mut server = Server::new(SyncConfig::default());
    let mut orphan = op(
        2,
        EntityType::FindLog,
        "f",
        OpKind::Create,
        0,
        json!({"id": "f", "field_session_id": "nowhere"}),
    );
    orphan = orphan.sealed();
    assert_eq!(
        statuses(&send(&mut server, "ann", "phone", vec![orphan])),
        [(OpStatus::Blocked, Some("dependency_missing"))]
    );
    let mut bad_parent = session(3, "fs");
    bad_parent.payload["id"] = json!("other");
    let bad_parent = bad_parent.sealed();
    let mut child = op(
        4,
        EntityType::FindLog,
        "f4",
        OpKind::Create,
        0,
        json!({"id": "f4", "field_session_id": "fs"}),
    );
    child.depends_on = vec![OpId::from("op-3")];
    let child = child.sealed();
    assert_eq!(
        statuses(&send(&mut server, "ann", "phone", vec![bad_parent, child])),
        [
            (OpStatus::Rejected, Some("invalid_op")),
            (OpStatus::Blocked, Some("dependency_failed"))
        ]
    );
    let mut child = op(
        6,
        EntityType::FindLog,
        "f6",
        OpKind::Create,
        0,
        json!({"id": "f6", "field_session_id": "fs5"}),
    );
    child.depends_on = vec![OpId::from("op-5")];
    let child = child.sealed();
    assert_eq!(
        statuses(&send(
            &mut server,
            "ann",
            "phone",
            vec![session(5, "fs5"), child]
        )),
        [(OpStatus::Applied, None), (OpStatus::Applied, None)]
    );
}

#[test]
fn a_resent_rejected_op_is_answered_rejected_again() {
    // Found by the swarm: a rejection whose answer was lost came back as `duplicate` when
    // the op was resent, and the client counted it applied.
    let mut server = Server::new(SyncConfig::default());
    send(&mut server, "ann", "phone", vec![session(1, "fs")]);
    let child = op(
        2,
        EntityType::FindLog,
        "fl",
        OpKind::Create,
        0,
        json!({"id": "fl", "field_session_id": "fs"}),
    );
    send(&mut server, "ann", "phone", vec![child]);
    let delete = op(
        3,
        EntityType::FieldSession,
        "fs",
        OpKind::Delete,
        1,
        Value::Null,
    );
    let first = send(&mut server, "ann", "phone", vec![delete.clone()]);
    assert_eq!(
        statuses(&first),
        [(OpStatus::Rejected, Some("has_children"))]
    );
    let again = send(&mut server, "ann", "phone", vec![delete]);
    assert_eq!(
        again, first,
        "the same answer, not a duplicate that reads as settled"
    );
    // An applied op resent is still a duplicate.
    let resent = send(&mut server, "ann", "phone", vec![session(1, "fs")]);
    assert_eq!(resent[0].status, OpStatus::Duplicate);
}

#[test]
fn not_found_version_ahead_and_deleted_ids_are_rejected() {
    let mut server = Server::new(SyncConfig::default());
    let update = op(
        1,
        EntityType::Tag,
        "t",
        OpKind::Update,
        1,
        json!({"name": "x"}),
    );
    assert_eq!(
        statuses(&send(&mut server, "ann", "phone", vec![update])),
        [(OpStatus::Rejected, Some("not_found"))]
    );
    send(&mut server, "ann", "phone", vec![session(2, "fs")]);
    let ahead = op(
        3,
        EntityType::FieldSession,
        "fs",
        OpKind::Update,
        5,
        json!({"name": "x"}),
    );
    assert_eq!(
        statuses(&send(&mut server, "ann", "phone", vec![ahead])),
        [(OpStatus::Rejected, Some("version_ahead"))]
    );
    let delete = op(
        4,
        EntityType::FieldSession,
        "fs",
        OpKind::Delete,
        1,
        Value::Null,
    );
    let create_again = session(5, "fs");
    assert_eq!(
        statuses(&send(
            &mut server,
            "ann",
            "phone",
            vec![delete, create_again]
        )),
        [
            (OpStatus::Applied, None),
            (OpStatus::Rejected, Some("entity_deleted"))
        ]
    );
}

#[test]
fn another_users_entity_is_forbidden_and_unchanged() {
    let mut server = Server::new(SyncConfig::default());
    send(&mut server, "ann", "phone", vec![session(1, "fs")]);
    let before = server.tables().entities.clone();
    let forged = op(
        2,
        EntityType::FieldSession,
        "fs",
        OpKind::Update,
        1,
        json!({"name": "mine now"}),
    );
    assert_eq!(
        statuses(&send(&mut server, "bob", "laptop", vec![forged])),
        [(OpStatus::Rejected, Some("forbidden"))]
    );
    assert_eq!(server.tables().entities, before);
    assert!(
        server
            .changes(&user("bob"), None, 0, 10, NOW)
            .unwrap()
            .changes
            .is_empty()
    );
}

#[test]
fn the_same_device_id_names_each_users_own_device() {
    let mut server = Server::new(SyncConfig::default());
    send(&mut server, "ann", "phone", vec![session(1, "fs")]);
    let batch = Batch::new("b".into(), "phone".into(), vec![session(2, "fs2")]);
    let answer = server.handle_batch(&user("bob"), &batch, NOW).unwrap();
    assert_eq!(answer.results[0].status, OpStatus::Applied);
    let phone = DeviceId::from("phone");
    let ann = server.state(&user("ann"), &phone).unwrap().device;
    let bob = server.state(&user("bob"), &phone).unwrap().device;
    assert_eq!(
        (ann.batch_count, ann.op_count),
        (1, 1),
        "ann's phone untouched"
    );
    assert_eq!((bob.batch_count, bob.op_count), (1, 1), "bob's own phone");
    assert_eq!(server.tables().devices.len(), 2);
}

#[test]
fn a_batch_with_a_bad_checksum_is_refused_whole() {
    let mut server = Server::new(SyncConfig::default());
    let mut batch = Batch::new("b".into(), "phone".into(), vec![session(1, "fs")]);
    batch.ops[0].priority = Priority::CRITICAL;
    let error = server.handle_batch(&user("ann"), &batch, NOW).unwrap_err();
    assert_eq!(error.code().as_str(), "checksum_mismatch");
    assert!(
        error
            .to_string()
            .starts_with("batch checksum mismatch: the content hashes to"),
        "{error}"
    );
    assert_eq!(server.tables(), &Tables::default());
}

#[test]
fn a_batch_over_the_op_limit_is_too_large() {
    let mut server = Server::new(SyncConfig::default());
    let ops = (0..=BATCH_OP_COUNT_MAX as u32)
        .map(|n| session(n, &format!("fs{n}")))
        .collect();
    let batch = Batch::new("b".into(), "phone".into(), ops);
    let error = server.handle_batch(&user("ann"), &batch, NOW).unwrap_err();
    assert_eq!(
        (error.code().as_str(), error.to_string()),
        (
            "too_large",
            "batch carries 501 ops, more than the limit of 500".to_owned()
        )
    );
}

/// Found by `rockhound explore` (seed 389): an update that meets the server's tombstone and
/// loses must answer that the entity is deleted, not its last live fields, or the device
/// shows a deleted entity as live for good.
#[test]
fn an_update_losing_to_a_delete_answers_deleted_over_the_wire() {
    let mut config = SyncConfig::default();
    config
        .entities
        .set_strategy(EntityType::FieldSession, Strategy::ServerWins);
    let mut server = Server::new(config);
    send(&mut server, "ann", "phone", vec![session(1, "fs")]);
    let delete = op(
        2,
        EntityType::FieldSession,
        "fs",
        OpKind::Delete,
        1,
        Value::Null,
    );
    send(&mut server, "ann", "phone", vec![delete]);
    let stale = op(
        3,
        EntityType::FieldSession,
        "fs",
        OpKind::Update,
        1,
        json!({"name": "b"}),
    );
    let result = send(&mut server, "ann", "tablet", vec![stale]).remove(0);
    assert_eq!(result.status, OpStatus::Conflict);
    assert_eq!((result.version, result.deleted), (Some(2), true));
    assert_eq!(result.entity, None);
    let wire = serde_json::to_value(&result).unwrap();
    assert_eq!(wire["deleted"], json!(true));
    assert!(wire.get("entity").is_none());
    let back: OpResult = serde_json::from_value(wire).unwrap();
    assert_eq!(back, result);
    // A live answer leaves `deleted` out, as clients of the unextended format expect.
    let (_, live) = stale_update_under(Strategy::ServerWins);
    assert!(
        serde_json::to_value(&live)
            .unwrap()
            .get("deleted")
            .is_none()
    );
}

fn stale_update_under(strategy: Strategy) -> (Server, OpResult) {
    let mut config = SyncConfig::default();
    config
        .entities
        .set_strategy(EntityType::FieldSession, strategy);
    let mut server = Server::new(config);
    send(&mut server, "ann", "phone", vec![session(1, "fs")]);
    send(
        &mut server,
        "ann",
        "phone",
        vec![op(
            2,
            EntityType::FieldSession,
            "fs",
            OpKind::Update,
            1,
            json!({"name": "a"}),
        )],
    );
    let stale = op(
        3,
        EntityType::FieldSession,
        "fs",
        OpKind::Update,
        1,
        json!({"name": "b", "notes": "n"}),
    );
    let result = send(&mut server, "ann", "tablet", vec![stale]).remove(0);
    (server, result)
}

#[test]
fn a_stale_update_is_a_conflict_under_every_strategy() {
    let expected = [
        (
            Strategy::ClientWins,
            "client_applied",
            json!({"id": "fs", "name": "b", "notes": "n"}),
        ),
        (
            Strategy::ServerWins,
            "server_kept",
            json!({"id": "fs", "name": "a"}),
        ),
        (
            Strategy::LatestTimestamp,
            "client_applied",
            json!({"id": "fs", "name": "b", "notes": "n"}),
        ),
        (
            Strategy::FieldLevel,
            "merged",
            json!({"id": "fs", "name": "b", "notes": "n"}),
        ),
        (
            Strategy::Merge,
            "merged",
            json!({"id": "fs", "name": "b", "notes": "n"}),
        ),
        (Strategy::Manual, "manual", json!({"id": "fs", "name": "a"})),
    ];
    for (strategy, reason, entity) in expected {
        let (server, result) = stale_update_under(strategy);
        assert_eq!(result.status, OpStatus::Conflict, "{strategy}");
        assert_eq!(
            result.reason.map(|r| r.as_str()),
            Some(reason),
            "{strategy}"
        );
        assert_eq!(result.entity.as_ref(), Some(&entity), "{strategy}");
        let conflict = &server.conflicts(&user("ann"), None)[0];
        let open = strategy == Strategy::Manual;
        assert_eq!(conflict.status == ConflictStatus::Open, open, "{strategy}");
        assert_eq!(Some(&conflict.conflict_id), result.conflict_id.as_ref());
        replay::verify(server.tables()).unwrap();
    }
}

#[test]
fn a_manual_conflict_is_resolved_once_and_only_by_its_owner() {
    let (mut server, result) = stale_update_under(Strategy::Manual);
    let id = result.conflict_id.unwrap();
    let keep_client = ResolveRequest {
        resolution: Resolution::KeepClient,
        entity: None,
    };
    let error = server
        .resolve_conflict(&user("bob"), &id, &keep_client, NOW)
        .unwrap_err();
    assert_eq!(error.code().as_str(), "forbidden");
    let error = server
        .resolve_conflict(
            &user("ann"),
            &ConflictId::from("conflict-999"),
            &keep_client,
            NOW,
        )
        .unwrap_err();
    assert_eq!(
        (error.code().as_str(), error.to_string()),
        ("not_found", "no conflict conflict-999".to_owned())
    );
    let custom_without_entity = ResolveRequest {
        resolution: Resolution::Custom,
        entity: None,
    };
    let error = server
        .resolve_conflict(&user("ann"), &id, &custom_without_entity, NOW)
        .unwrap_err();
    assert_eq!(
        (error.code().as_str(), error.to_string()),
        (
            "invalid_value",
            "resolution custom needs an entity".to_owned()
        )
    );

    let resolved = server
        .resolve_conflict(&user("ann"), &id, &keep_client, NOW)
        .unwrap();
    assert_eq!(resolved.resolution.map(|r| r.as_str()), Some("keep_client"));
    let entity = &server.tables().entities[&(EntityType::FieldSession, EntityId::from("fs"))].state;
    assert_eq!(
        (entity.version, entity.to_value()),
        (3, json!({"id": "fs", "name": "b", "notes": "n"}))
    );
    let error = server
        .resolve_conflict(&user("ann"), &id, &keep_client, NOW)
        .unwrap_err();
    assert_eq!(error.code().as_str(), "already_resolved");
    assert!(
        server
            .conflicts(&user("ann"), Some(ConflictStatus::Open))
            .is_empty()
    );
    replay::verify(server.tables()).unwrap();
}

#[test]
fn a_named_strategy_resolves_a_manual_conflict_on_the_server_against_the_entity_now() {
    let later = json!({"id": "fs", "name": "b", "notes": "n"});
    let kept = json!({"id": "fs", "name": "a"});
    for (resolution, expected, version) in [
        (Resolution::ServerWins, &kept, 2),
        (Resolution::ClientWins, &later, 3),
        (Resolution::LatestTimestamp, &later, 3),
        (Resolution::FieldLevel, &later, 3),
        (Resolution::Merge, &later, 3),
    ] {
        let (mut server, result) = stale_update_under(Strategy::Manual);
        let id = result.conflict_id.unwrap();
        let with_entity = ResolveRequest {
            resolution,
            entity: Some(json!({"id": "fs"})),
        };
        let error = server
            .resolve_conflict(&user("ann"), &id, &with_entity, NOW)
            .unwrap_err();
        assert_eq!(error.code().as_str(), "invalid_value", "{resolution:?}");
        let request = ResolveRequest {
            resolution,
            entity: None,
        };
        let resolved = server
            .resolve_conflict(&user("ann"), &id, &request, NOW)
            .unwrap();
        let name = serde_json::to_value(resolution).unwrap();
        assert_eq!(
            resolved.resolution.map(|r| r.as_str()),
            name.as_str(),
            "{resolution:?}"
        );
        let entity =
            &server.tables().entities[&(EntityType::FieldSession, EntityId::from("fs"))].state;
        assert_eq!(
            (entity.version, &entity.to_value()),
            (version, expected),
            "{resolution:?}"
        );
        replay::verify(server.tables()).unwrap();
    }
    // Deleted since the conflict: no strategy brings the entity back.
    let (mut server, result) = stale_update_under(Strategy::Manual);
    let delete = op(
        4,
        EntityType::FieldSession,
        "fs",
        OpKind::Delete,
        2,
        json!(null),
    );
    send(&mut server, "ann", "phone", vec![delete]);
    let request = ResolveRequest {
        resolution: Resolution::ClientWins,
        entity: None,
    };
    let id = result.conflict_id.unwrap();
    server
        .resolve_conflict(&user("ann"), &id, &request, NOW)
        .unwrap();
    let entity = &server.tables().entities[&(EntityType::FieldSession, EntityId::from("fs"))].state;
    assert!(entity.deleted, "the tombstone stands");
    replay::verify(server.tables()).unwrap();
}

#[test]
fn pull_pages_through_changes_with_tombstones() {
    let mut server = Server::new(SyncConfig::default());
    send(
        &mut server,
        "ann",
        "phone",
        (1..=5).map(|n| session(n, &format!("fs{n}"))).collect(),
    );
    send(
        &mut server,
        "ann",
        "phone",
        vec![op(
            6,
            EntityType::FieldSession,
            "fs1",
            OpKind::Delete,
            1,
            Value::Null,
        )],
    );
    let first = server
        .changes(&user("ann"), Some(&DeviceId::from("phone")), 0, 3, NOW)
        .unwrap();
    assert_eq!(first.changes.len(), 3);
    assert!(first.has_more);
    let second = server
        .changes(
            &user("ann"),
            Some(&DeviceId::from("phone")),
            first.next_cursor,
            3,
            NOW,
        )
        .unwrap();
    assert!(!second.has_more);
    let ids: Vec<(&str, bool)> = first
        .changes
        .iter()
        .chain(&second.changes)
        .map(|c| (c.entity_id.as_str(), c.deleted))
        .collect();
    assert_eq!(
        ids,
        [
            ("fs2", false),
            ("fs3", false),
            ("fs4", false),
            ("fs5", false),
            ("fs1", true)
        ]
    );
    let state = server
        .state(&user("ann"), &DeviceId::from("phone"))
        .unwrap();
    assert_eq!(
        (
            state.device.pull_cursor,
            state.latest_cursor,
            state.entity_count
        ),
        (second.next_cursor, second.next_cursor, 4)
    );
    let error = server.changes(&user("ann"), None, 0, 0, NOW).unwrap_err();
    assert_eq!(error.to_string(), "limit 0 is out of range: use 1 to 1000");
}

#[test]
fn history_and_metrics_count_every_op() {
    let mut server = Server::new(SyncConfig::default());
    send(
        &mut server,
        "ann",
        "phone",
        vec![session(1, "fs"), session(1, "fs")],
    );
    let history = server.history(&user("ann"), 10).unwrap();
    let statuses: Vec<&str> = history.iter().map(|r| r.status.as_str()).collect();
    assert_eq!(statuses, ["duplicate", "applied"], "newest first");
    let metrics = server.metrics(&user("ann"));
    assert_eq!(
        (
            metrics[0].batches,
            metrics[0].ops,
            metrics[0].applied,
            metrics[0].duplicates
        ),
        (1, 2, 1, 1)
    );
}

/// Each metrics window is one hour of the server's clock, starting on the hour: a batch
/// counts in the window its arrival falls in, and an hour later a new window opens.
#[test]
fn metrics_windows_are_the_hours_of_the_server_clock() {
    let mut server = Server::new(SyncConfig::default());
    let later = Millis(NOW.0 + HOUR_MS);
    for (n, at) in [(1, NOW), (2, NOW), (3, later)] {
        let batch = Batch::new(
            BatchId(format!("b-{n}")),
            DeviceId::from("phone"),
            vec![session(n, &format!("fs-{n}"))],
        );
        server.handle_batch(&user("ann"), &batch, at).unwrap();
    }
    let windows: Vec<(u64, u64)> = server
        .metrics(&user("ann"))
        .iter()
        .map(|w| (w.window_start_ms.0, w.batches))
        .collect();
    // 1_760_000_000_000 ms is 53 min 20 s past an hour.
    let hour = NOW.0 - 3_200_000;
    assert_eq!(windows, [(hour, 2), (hour + HOUR_MS, 1)]);
}

#[test]
fn cleanup_drops_old_keys_and_history_but_keeps_entities() {
    let mut server = Server::new(SyncConfig::default());
    send(&mut server, "ann", "phone", vec![session(1, "fs")]);
    let later = Millis(NOW.0 + HISTORY_RETENTION_MS + DAY_MS);
    let report = server.cleanup(later).unwrap();
    assert_eq!(
        (report.idempotency_keys, report.history_rows, report.batches),
        (1, 1, 1)
    );
    assert_eq!(server.tables().entities.len(), 1);
}

/// One random request of the property test.
#[derive(Clone, Debug)]
enum Step {
    Create {
        user: usize,
        device: usize,
        entity: usize,
    },
    Update {
        user: usize,
        device: usize,
        entity: usize,
        base_back: u64,
        field: usize,
        value: u8,
    },
    Delete {
        user: usize,
        device: usize,
        entity: usize,
    },
    Replay {
        index: usize,
    },
    Corrupt {
        index: usize,
    },
}

fn step() -> impl Gen<Value = Step> {
    prop_oneof![
        (0usize..3, 0usize..2, 0usize..6).prop_map(|(user, device, entity)| Step::Create {
            user,
            device,
            entity
        }),
        (0usize..3, 0usize..2, 0usize..6, 0u64..3, 0usize..3, 0u8..4).prop_map(
            |(user, device, entity, base_back, field, value)| Step::Update {
                user,
                device,
                entity,
                base_back,
                field,
                value
            }
        ),
        (0usize..3, 0usize..2, 0usize..6).prop_map(|(user, device, entity)| Step::Delete {
            user,
            device,
            entity
        }),
        any::<usize>().prop_map(|index| Step::Replay { index }),
        any::<usize>().prop_map(|index| Step::Corrupt { index }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn the_server_equals_the_replay_of_its_log_and_never_leaks_or_doubles(
        steps in prop::collection::vec(step(), 1..60),
        strategy in prop::sample::select(Strategy::ALL.to_vec()),
    ) {
        let mut config = SyncConfig::default();
        config.entities.set_strategy(EntityType::Tag, strategy);
        let mut server = Server::new(config);
        let users = ["ann", "bob", "cy"];
        let mut sent: Vec<(usize, usize, Op)> = Vec::new();
        for (n, step) in steps.iter().enumerate() {
            let n = n as u32;
            let (who, device, op) = match *step {
                Step::Create { user, device, entity } => {
                    let id = format!("t{entity}");
                    (user, device, op(n, EntityType::Tag, &id, OpKind::Create, 0, json!({"id": id, "f0": 0})))
                }
                Step::Update { user, device, entity, base_back, field, value } => {
                    let key = (EntityType::Tag, EntityId(format!("t{entity}")));
                    let version = server.tables().entities.get(&key).map_or(1, |e| e.state.version);
                    let base = version.saturating_sub(base_back).max(1);
                    (user, device, op(n, EntityType::Tag, &key.1.0, OpKind::Update, base, json!({format!("f{field}"): value})))
                }
                Step::Delete { user, device, entity } => {
                    let key = (EntityType::Tag, EntityId(format!("t{entity}")));
                    let version = server.tables().entities.get(&key).map_or(1, |e| e.state.version);
                    (user, device, op(n, EntityType::Tag, &key.1.0, OpKind::Delete, version, Value::Null))
                }
                Step::Replay { index } if !sent.is_empty() => sent[index % sent.len()].clone(),
                Step::Corrupt { index } if !sent.is_empty() => {
                    let (who, device, mut op) = sent[index % sent.len()].clone();
                    op.client_timestamp_ms = op.client_timestamp_ms.plus_ms(1);
                    (who, device, op)
                }
                Step::Replay { .. } | Step::Corrupt { .. } => continue,
            };
            let device_id = DeviceId(format!("{}-{device}", users[who]));
            let batch = Batch::new(BatchId(format!("b{n}")), device_id, vec![op.clone()]);
            let response = server.handle_batch(&user(users[who]), &batch, NOW).unwrap();
            // No response ever carries another user's entity.
            for result in &response.results {
                if result.entity.is_some() {
                    let owner = &server.tables().entities[&(op.entity_type, op.entity_id.clone())].owner;
                    prop_assert_eq!(owner, &user(users[who]));
                }
            }
            if !matches!(step, Step::Replay { .. } | Step::Corrupt { .. }) {
                sent.push((who, device, op));
            }
        }
        replay::verify(server.tables()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        // No (user, idempotency key) was applied twice: at most one history row per key
        // carries a write.
        let mut writes = std::collections::BTreeMap::new();
        for ((owner, _), row) in &server.tables().sync_history {
            if row.write.is_some() && row.action != HistoryAction::Resolve {
                *writes.entry((owner.clone(), row.idempotency_key.clone())).or_insert(0) += 1;
            }
        }
        prop_assert!(writes.values().all(|&count| count == 1), "{writes:?}");
        // The running counts behind GET /state equal a recount.
        let tables = server.tables();
        for name in users {
            let counts = tables.user_counts.get(&user(name)).copied().unwrap_or_default();
            let live = tables.entities.values().filter(|e| e.owner == user(name) && !e.state.deleted).count();
            let open = server.conflicts(&user(name), Some(ConflictStatus::Open)).len();
            prop_assert_eq!((counts.live_entities, counts.open_conflicts), (live as u64, open as u64));
        }
        // Each user's pull shows only that user's entities.
        for name in users {
            let page = server.changes(&user(name), None, 0, PULL_LIMIT_MAX, NOW).unwrap();
            for change in page.changes {
                prop_assert_eq!(&server.tables().entities[&(change.entity_type, change.entity_id)].owner, &user(name));
            }
        }
    }
}

mod hardening;

#[test]
fn a_full_server_answers_retry_storage_full_and_applies_the_resent_create_once_room_is_back() {
    let mut server = Server::new(SyncConfig::default());
    assert_eq!(
        statuses(&send(&mut server, "ann", "phone", vec![session(1, "s1")])),
        [(OpStatus::Applied, None)]
    );
    server.set_capacity(Capacity {
        entities: 1,
        ..Capacity::default()
    });
    let full = send(&mut server, "ann", "phone", vec![session(2, "s2")]);
    assert_eq!(statuses(&full), [(OpStatus::Retry, Some("storage_full"))]);
    assert!(
        !server
            .tables()
            .entities
            .contains_key(&(EntityType::FieldSession, EntityId("s2".into())))
    );
    // An update needs no new row: it still applies on a full disk.
    let update = op(
        3,
        EntityType::FieldSession,
        "s1",
        OpKind::Update,
        1,
        json!({"name": "ridge"}),
    );
    assert_eq!(
        statuses(&send(&mut server, "ann", "phone", vec![update])),
        [(OpStatus::Applied, None)]
    );
    server.set_capacity(Capacity::default());
    let resent = send(&mut server, "ann", "phone", vec![session(2, "s2")]);
    assert_eq!(statuses(&resent), [(OpStatus::Applied, None)]);
}

/// Found by the `referential` checker (`rockhound explore`, seed 511): a `keep_client`
/// resolution of a delete that met an update deleted a field session while a live find
/// log referenced it. A resolution is a write: it may not orphan a live child.
#[test]
fn a_resolution_that_would_orphan_a_live_child_is_refused_and_changes_nothing() {
    let (mut server, _) = stale_update_under(Strategy::Manual);
    let delete = op(
        4,
        EntityType::FieldSession,
        "fs",
        OpKind::Delete,
        1,
        Value::Null,
    );
    let conflict = send(&mut server, "ann", "tablet", vec![delete]).remove(0);
    assert_eq!(conflict.reason.map(|r| r.as_str()), Some("manual"));
    let child = op(
        5,
        EntityType::FindLog,
        "find",
        OpKind::Create,
        0,
        json!({"id": "find", "field_session_id": "fs", "mineral": "agate"}),
    );
    assert_eq!(
        statuses(&send(&mut server, "ann", "phone", vec![child])),
        [(OpStatus::Applied, None)]
    );
    let keep_client = ResolveRequest {
        resolution: Resolution::KeepClient,
        entity: None,
    };
    let id = conflict.conflict_id.unwrap();
    let error = server
        .resolve_conflict(&user("ann"), &id, &keep_client, NOW)
        .unwrap_err();
    assert_eq!(error.code().as_str(), "invalid_value");
    assert!(error.to_string().contains("live children"), "{error}");
    let key = (EntityType::FieldSession, EntityId("fs".into()));
    assert!(
        !server.tables().entities[&key].state.deleted,
        "nothing changed"
    );
    // Keeping the server's entity still settles it.
    let keep_server = ResolveRequest {
        resolution: Resolution::KeepServer,
        entity: None,
    };
    server
        .resolve_conflict(&user("ann"), &id, &keep_server, NOW)
        .unwrap();
    replay::verify(server.tables()).unwrap();
}

#[test]
fn the_server_keeps_each_devices_report_its_network_quality_and_the_batches_timings() {
    use super::wire::NetworkQuality;
    use crate::op::ClientReport;
    let mut server = Server::new(SyncConfig::default());
    let ann = user("ann");
    let report = |round_trip_ms: Option<u64>, failed_requests: u64| ClientReport {
        pending: 3,
        blocked: 1,
        failed: 2,
        round_trip_ms,
        failed_requests,
    };
    // A batch that arrived at NOW, its ops decided 40 and 90 ms later, answered at 120.
    let at = |ms: u64| Millis(NOW.0 + ms);
    let batch = Batch::reporting(
        "b-1".into(),
        "phone".into(),
        vec![session(1, "s1"), session(2, "s2")],
        Some(report(Some(80), 0)),
    );
    server.admit_batch(&batch).unwrap();
    let results = vec![
        server.handle_op(&ann, &batch, &batch.ops[0], NOW, at(40)),
        server.handle_op(&ann, &batch, &batch.ops[1], NOW, at(90)),
    ];
    server
        .finish_batch(&ann, &batch, results, NOW, at(120))
        .unwrap();
    let durations: Vec<Option<u64>> = server
        .history(&ann, 10)
        .unwrap()
        .iter()
        .map(|row| row.duration_ms)
        .collect();
    assert_eq!(durations, [Some(90), Some(40)], "newest first");
    let record = &server.tables().sync_batches[&(ann.clone(), "b-1".into())];
    assert_eq!((record.received_at_ms, record.decide_ms), (NOW, Some(120)));
    let state = server.state(&ann, &"phone".into()).unwrap();
    assert_eq!(state.device.report, Some(report(Some(80), 0)));
    assert_eq!(state.device.network_quality, Some(NetworkQuality::Good));
    // Worse reports: a slow answer, failures, a round trip at u64's maximum.
    for (n, (round_trip_ms, failed, quality)) in [
        (Some(700), 0, NetworkQuality::Fair),
        (None, 1, NetworkQuality::Fair),
        (Some(100), 3, NetworkQuality::Poor),
        (Some(u64::MAX), 0, NetworkQuality::Poor),
    ]
    .into_iter()
    .enumerate()
    {
        let batch = Batch::reporting(
            BatchId(format!("b-worse-{n}")),
            "phone".into(),
            vec![],
            Some(report(round_trip_ms, failed)),
        );
        server.handle_batch(&ann, &batch, at(200)).unwrap();
        let state = server.state(&ann, &"phone".into()).unwrap();
        assert_eq!(state.device.network_quality, Some(quality));
    }
    // The metrics window sums what it saw, saturating rather than wrapping.
    let window = server.metrics(&ann).pop().unwrap();
    assert_eq!(
        (window.batches, window.decide_ms_max, window.decide_ms_total),
        (5, 120, 120)
    );
    assert_eq!(window.round_trips, 4);
    assert_eq!(
        (window.round_trip_ms_max, window.round_trip_ms_total),
        (u64::MAX, u64::MAX)
    );
    // A batch without a report leaves the last one in place.
    server
        .handle_batch(
            &ann,
            &Batch::new("b-9".into(), "phone".into(), vec![]),
            at(300),
        )
        .unwrap();
    let state = server.state(&ann, &"phone".into()).unwrap();
    assert_eq!(state.device.network_quality, Some(NetworkQuality::Poor));
}

/// The planted split commit (`exactly_once_server_splits_commit`) models one bug exactly: an
/// op's idempotency record is committed with the batch's record instead of with the op. A
/// whole batch then leaves every record stored, as a correct server does; only a server that
/// dies between the two halves forgets them, and the resent op is decided again.
#[test]
fn a_planted_split_commit_shows_only_when_the_server_dies_between_its_halves() {
    let mut config = SyncConfig::default();
    config.planted.server.splits_commit = true;
    let key = |n: u32| (user("ann"), IdempotencyKey(format!("key-{n}")));
    let ops = vec![session(1, "wash"), session(2, "ridge")];

    let mut whole = Server::new(config.clone());
    send(&mut whole, "ann", "phone", ops.clone());
    assert!(whole.tables().sync_idempotency_keys.contains_key(&key(1)));
    assert!(whole.tables().sync_idempotency_keys.contains_key(&key(2)));
    let again = send(&mut whole, "ann", "phone", ops.clone());
    assert!(
        again.iter().all(|r| r.status == OpStatus::Duplicate),
        "{again:?}"
    );

    let mut dies = Server::new(config);
    let batch = Batch::new(BatchId::from("b-0"), DeviceId::from("phone"), ops.clone());
    let first = dies.handle_op(&user("ann"), &batch, &ops[0], NOW, NOW);
    assert_eq!(first.status, OpStatus::Applied);
    dies.lose_memory();
    assert!(!dies.tables().sync_idempotency_keys.contains_key(&key(1)));
    let resent = send(&mut dies, "ann", "phone", ops);
    assert_ne!(resent[0].status, OpStatus::Duplicate, "{resent:?}");
}
