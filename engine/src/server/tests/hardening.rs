//! Regression tests for the findings of the adversarial review of the server core: each
//! one failed before its fix. The HTTP-level findings are tested over a real socket in
//! `cli/tests/it/hardening.rs`.

use super::*;

/// A create of a find log under `session`.
fn find_log(n: u32, id: &str, session: &str) -> Op {
    op(
        n,
        EntityType::FindLog,
        id,
        OpKind::Create,
        0,
        json!({"id": id, "field_session_id": session, "notes": "quartz"}),
    )
}

/// `op` with its content changed after sealing: the checksum is no longer its own.
fn damaged(mut op: Op, change: impl FnOnce(&mut Op)) -> Op {
    change(&mut op);
    op
}

#[test]
fn an_invalid_copy_carrying_a_valid_ops_checksum_neither_panics_nor_blocks_the_valid_op() {
    let mut server = Server::new(SyncConfig::default());
    let valid = session(1, "fs");
    // Same key, another op id, an invalid created_at_ms, and the valid op's checksum.
    let forged = damaged(valid.clone(), |op| {
        op.op_id = OpId::from("op-forged");
        op.created_at_ms = Millis(0);
    });
    let first = send(&mut server, "ann", "phone", vec![forged]);
    assert_eq!(
        statuses(&first),
        [(OpStatus::Rejected, Some("checksum_mismatch"))]
    );
    let second = send(&mut server, "ann", "phone", vec![valid]);
    assert_eq!(statuses(&second), [(OpStatus::Applied, None)]);
    replay::verify(server.tables()).unwrap();
}

#[test]
fn a_damaged_invalid_copy_is_not_remembered_and_the_genuine_op_applies() {
    let mut server = Server::new(SyncConfig::default());
    let genuine = session(1, "fs");
    let damaged_copy = damaged(genuine.clone(), |op| op.base_version = 7);
    let first = send(&mut server, "ann", "phone", vec![damaged_copy]);
    assert_eq!(
        statuses(&first),
        [(OpStatus::Rejected, Some("checksum_mismatch"))]
    );
    let tables = server.tables();
    assert!(
        tables.sync_idempotency_keys.is_empty(),
        "nothing remembered"
    );
    assert!(
        tables.sync_queue.is_empty(),
        "no queue row under a claimed id"
    );
    assert!(
        tables.sync_history.is_empty(),
        "no history row under a claimed id"
    );
    let second = send(&mut server, "ann", "phone", vec![genuine]);
    assert_eq!(statuses(&second), [(OpStatus::Applied, None)]);
}

#[test]
fn a_damaged_copy_of_an_applied_op_leaves_its_queue_row_and_its_dependents_alone() {
    let mut server = Server::new(SyncConfig::default());
    let parent = session(1, "fs");
    send(&mut server, "ann", "phone", vec![parent.clone()]);
    let copy = damaged(parent.clone(), |op| op.payload["name"] = json!("forged"));
    send(&mut server, "ann", "phone", vec![copy]);
    let mut child = find_log(2, "fl", "fs");
    child.depends_on = vec![parent.op_id.clone()];
    let child = child.sealed();
    let results = send(&mut server, "ann", "phone", vec![child]);
    assert_eq!(statuses(&results), [(OpStatus::Applied, None)]);
}

#[test]
fn an_op_id_used_under_another_key_is_refused_and_does_not_overwrite_the_first() {
    let mut server = Server::new(SyncConfig::default());
    send(&mut server, "ann", "phone", vec![session(1, "fs")]);
    let mut other = session(2, "fs-2");
    other.op_id = OpId::from("op-1");
    let results = send(&mut server, "ann", "phone", vec![other.sealed()]);
    assert_eq!(
        statuses(&results),
        [(OpStatus::Rejected, Some("op_id_reused"))]
    );
    let row = &server.tables().sync_queue[&(user("ann"), OpId::from("op-1"))];
    assert_eq!(
        (row.entity_id.as_str(), row.status),
        ("fs", OpStatus::Applied)
    );
    assert!(
        !server
            .tables()
            .entities
            .contains_key(&(EntityType::FieldSession, EntityId::from("fs-2")))
    );
}

#[test]
fn an_op_with_ids_over_the_id_rule_is_answered_but_not_stored() {
    let mut server = Server::new(SyncConfig::default());
    let mut huge = session(1, "fs");
    huge.op_id = OpId("o".repeat(100_000));
    huge.idempotency_key = IdempotencyKey("k".repeat(100_000));
    let results = send(&mut server, "ann", "phone", vec![huge.sealed()]);
    assert_eq!(
        statuses(&results),
        [(OpStatus::Rejected, Some("invalid_op"))]
    );
    let tables = server.tables();
    assert!(tables.sync_queue.is_empty());
    assert!(tables.sync_history.is_empty());
    assert!(tables.sync_idempotency_keys.is_empty());
    assert_eq!(server.metrics(&user("ann"))[0].rejected, 1, "still counted");
}

#[test]
fn no_one_can_squat_another_users_device_id() {
    let mut server = Server::new(SyncConfig::default());
    let ann_phone = DeviceId::from("ann-phone");
    // A pull registers nothing.
    server
        .changes(&user("mallory"), Some(&ann_phone), 0, 10, NOW)
        .unwrap();
    assert!(server.tables().devices.is_empty());
    // A batch registers the device for its own user only: mallory's batch under ann's
    // device id (sent before ann's first batch, the squatting case) is mallory's device.
    let squat = send(
        &mut server,
        "mallory",
        "ann-phone",
        vec![session(1, "fs-m")],
    );
    assert_eq!(statuses(&squat), [(OpStatus::Applied, None)]);
    let results = send(&mut server, "ann", "ann-phone", vec![session(2, "fs")]);
    assert_eq!(statuses(&results), [(OpStatus::Applied, None)]);
    // Ann's pulls record her cursor; mallory's record his own, on his own device.
    let page = server
        .changes(&user("ann"), Some(&ann_phone), 0, 10, NOW)
        .unwrap();
    assert_eq!(page.changes.len(), 1, "ann sees only her own session");
    server
        .changes(&user("mallory"), Some(&ann_phone), 0, 10, NOW)
        .unwrap();
    let ann = server.state(&user("ann"), &ann_phone).unwrap().device;
    assert_eq!(ann.pull_cursor, page.next_cursor);
    assert_eq!((ann.batch_count, ann.op_count), (1, 1));
}

fn update(n: u32, entity_type: EntityType, id: &str, base: u64, patch: Value) -> Op {
    op(n, entity_type, id, OpKind::Update, base, patch)
}

#[test]
fn an_update_gets_the_parent_checks_a_create_gets() {
    let mut server = Server::new(SyncConfig::default());
    send(&mut server, "bob", "bob-phone", vec![session(90, "bob-fs")]);
    send(
        &mut server,
        "ann",
        "phone",
        vec![
            session(1, "fs"),
            session(2, "fs-old"),
            find_log(3, "fl", "fs"),
        ],
    );
    let delete_old = op(
        4,
        EntityType::FieldSession,
        "fs-old",
        OpKind::Delete,
        1,
        Value::Null,
    );
    send(&mut server, "ann", "phone", vec![delete_old]);
    let cases = [
        (
            json!({"field_session_id": "bob-fs"}),
            OpStatus::Rejected,
            "forbidden",
        ),
        (
            json!({"field_session_id": "nowhere"}),
            OpStatus::Blocked,
            "dependency_missing",
        ),
        (
            json!({"field_session_id": "fs-old"}),
            OpStatus::Rejected,
            "parent_deleted",
        ),
        (
            json!({"field_session_id": null}),
            OpStatus::Rejected,
            "parent_required",
        ),
    ];
    for (n, (patch, status, reason)) in (10..).zip(cases) {
        let results = send(
            &mut server,
            "ann",
            "phone",
            vec![update(n, EntityType::FindLog, "fl", 1, patch.clone())],
        );
        assert_eq!(statuses(&results), [(status, Some(reason))], "{patch}");
    }
    let entity = &server.tables().entities[&(EntityType::FindLog, EntityId::from("fl"))];
    assert_eq!(entity.state.fields["field_session_id"], json!("fs"));
    assert_eq!(entity.state.version, 1, "no refused update changed it");
}

#[test]
fn a_specimen_may_clear_one_of_its_two_parents_but_not_both() {
    let mut server = Server::new(SyncConfig::default());
    send(
        &mut server,
        "ann",
        "phone",
        vec![session(1, "fs"), find_log(2, "fl", "fs")],
    );
    let specimen = op(
        3,
        EntityType::Specimen,
        "sp",
        OpKind::Create,
        0,
        json!({"id": "sp", "find_log_id": "fl", "processed_capture_id": null}),
    );
    // A create may not carry a null reference at all.
    let results = send(&mut server, "ann", "phone", vec![specimen]);
    assert_eq!(
        statuses(&results),
        [(OpStatus::Rejected, Some("invalid_op"))]
    );
    let specimen = op(
        4,
        EntityType::Specimen,
        "sp",
        OpKind::Create,
        0,
        json!({"id": "sp", "find_log_id": "fl"}),
    );
    send(&mut server, "ann", "phone", vec![specimen]);
    let clear = update(
        5,
        EntityType::Specimen,
        "sp",
        1,
        json!({"find_log_id": null}),
    );
    let results = send(&mut server, "ann", "phone", vec![clear]);
    assert_eq!(
        statuses(&results),
        [(OpStatus::Rejected, Some("parent_required"))]
    );
}

#[test]
fn deleting_a_parent_with_live_children_is_refused_until_the_children_are_gone() {
    let mut server = Server::new(SyncConfig::default());
    send(
        &mut server,
        "ann",
        "phone",
        vec![session(1, "fs"), find_log(2, "fl", "fs")],
    );
    let delete_parent = |n| {
        op(
            n,
            EntityType::FieldSession,
            "fs",
            OpKind::Delete,
            1,
            Value::Null,
        )
    };
    let results = send(&mut server, "ann", "phone", vec![delete_parent(3)]);
    assert_eq!(
        statuses(&results),
        [(OpStatus::Rejected, Some("has_children"))]
    );
    let delete_child = op(4, EntityType::FindLog, "fl", OpKind::Delete, 1, Value::Null);
    let results = send(
        &mut server,
        "ann",
        "phone",
        vec![delete_child, delete_parent(5)],
    );
    assert_eq!(
        statuses(&results),
        [(OpStatus::Applied, None), (OpStatus::Applied, None)]
    );
    assert!(server.tables().live_children.is_empty());
    replay::verify(server.tables()).unwrap();
}

#[test]
fn a_merge_of_large_arrays_is_bounded_and_an_entity_over_its_size_limit_is_refused() {
    let mut config = SyncConfig::default();
    config
        .entities
        .set_strategy(EntityType::Tag, Strategy::Merge);
    let mut server = Server::new(config);
    let tag = op(
        1,
        EntityType::Tag,
        "t",
        OpKind::Create,
        0,
        json!({"id": "t", "members": []}),
    );
    send(&mut server, "ann", "phone", vec![tag]);
    // Each update adds 4,000 distinct members from base version 1, so every one after the
    // first is a conflict whose arrays are unioned; the entity grows by ~60 KB per write.
    let mut refused = 0;
    for n in 0..8u32 {
        let members: Vec<String> = (0..4_000).map(|i| format!("m-{n}-{i:06}")).collect();
        let results = send(
            &mut server,
            "ann",
            "phone",
            vec![update(
                10 + n,
                EntityType::Tag,
                "t",
                1,
                json!({ "members": members }),
            )],
        );
        let result = &results[0];
        if result.reason.map(|r| r.as_str()) == Some("entity_too_large") {
            refused += 1;
        } else {
            assert!(
                matches!(result.status, OpStatus::Applied | OpStatus::Conflict),
                "{result:?}"
            );
        }
    }
    assert!(refused > 0, "the entity limit was reached");
    let stored = &server.tables().entities[&(EntityType::Tag, EntityId::from("t"))];
    let bytes = serde_json::to_vec(&stored.state.fields).unwrap().len();
    assert!(bytes <= ENTITY_BYTES_MAX, "{bytes} bytes stored");
    replay::verify(server.tables()).unwrap();
}

fn manual_conflict() -> (Server, ConflictId) {
    let (mut server, result) = super::stale_update_under(Strategy::Manual);
    send(&mut server, "bob", "bob-phone", vec![session(90, "bob-fs")]);
    (server, result.conflict_id.unwrap())
}

fn custom(entity: Value) -> ResolveRequest {
    ResolveRequest {
        resolution: Resolution::Custom,
        entity: Some(entity),
    }
}

#[test]
fn a_custom_resolution_gets_the_op_rules() {
    let (mut server, id) = manual_conflict();
    let before = server.tables().clone();
    let deep = (0..120).fold(json!(1), |inner, _| json!([inner]));
    let cases = [
        (
            json!({"id": "fs", "blob": "x".repeat(3 * 1024 * 1024)}),
            "invalid_value",
        ),
        (json!({"id": "fs", "deep": deep}), "invalid_value"),
        (json!({"id": "fs", "count": 1u64 << 63}), "invalid_value"),
    ];
    for (entity, code) in cases {
        let error = server
            .resolve_conflict(&user("ann"), &id, &custom(entity), NOW)
            .unwrap_err();
        assert_eq!(error.code().as_str(), code, "{error}");
    }
    assert_eq!(&before, server.tables(), "nothing stored by a refusal");
    let ok = server.resolve_conflict(
        &user("ann"),
        &id,
        &custom(json!({"id": "fs", "name": "agreed"})),
        NOW,
    );
    assert!(ok.is_ok());
}

#[test]
fn a_custom_resolution_may_not_reference_another_users_parent() {
    let mut config = SyncConfig::default();
    config
        .entities
        .set_strategy(EntityType::FindLog, Strategy::Manual);
    let mut server = Server::new(config);
    send(&mut server, "bob", "bob-phone", vec![session(90, "bob-fs")]);
    send(
        &mut server,
        "ann",
        "phone",
        vec![session(1, "fs"), find_log(2, "fl", "fs")],
    );
    send(
        &mut server,
        "ann",
        "phone",
        vec![update(
            3,
            EntityType::FindLog,
            "fl",
            1,
            json!({"notes": "a"}),
        )],
    );
    let results = send(
        &mut server,
        "ann",
        "phone",
        vec![update(
            4,
            EntityType::FindLog,
            "fl",
            1,
            json!({"notes": "b"}),
        )],
    );
    let id = results[0].conflict_id.clone().unwrap();
    let error = server
        .resolve_conflict(
            &user("ann"),
            &id,
            &custom(json!({"id": "fl", "field_session_id": "bob-fs"})),
            NOW,
        )
        .unwrap_err();
    assert_eq!(error.code().as_str(), "forbidden");
    let stored = &server.tables().entities[&(EntityType::FindLog, EntityId::from("fl"))];
    assert_eq!(stored.state.fields["field_session_id"], json!("fs"));
}

#[test]
fn cursors_history_and_conflict_ids_count_only_the_users_own_commits() {
    let quiet = |bob_ops: u32| {
        let mut server = super::stale_update_under(Strategy::Manual).0;
        for n in 0..bob_ops {
            send(
                &mut server,
                "bob",
                "bob-phone",
                vec![session(100 + n, &format!("b{n}"))],
            );
        }
        let ann = user("ann");
        let page = server.changes(&ann, None, 0, 100, NOW).unwrap();
        let history: Vec<u64> = server
            .history(&ann, 100)
            .unwrap()
            .iter()
            .map(|r| r.seq)
            .collect();
        let conflicts: Vec<String> = server
            .conflicts(&ann, None)
            .iter()
            .map(|c| c.conflict_id.0.clone())
            .collect();
        (page, history, conflicts)
    };
    // However much bob does, ann sees the same numbers.
    assert_eq!(quiet(0), quiet(25));
    let mut server = Server::new(SyncConfig::default());
    send(&mut server, "bob", "bob-phone", vec![session(100, "b")]);
    send(&mut server, "ann", "phone", vec![session(1, "fs")]);
    let page = server.changes(&user("ann"), None, 0, 100, NOW).unwrap();
    assert_eq!(
        page.changes[0].cursor, 1,
        "ann's first commit is her cursor 1"
    );
}

#[test]
fn conflicts_page_in_creation_order_by_status_from_a_cursor() {
    let mut config = SyncConfig::default();
    config
        .entities
        .set_strategy(EntityType::FieldSession, Strategy::Manual);
    let mut server = Server::new(config);
    // Three sessions, each updated twice from base version 1: three open conflicts.
    for (n, id) in (0u32..).zip(["a", "b", "c"]) {
        send(&mut server, "ann", "phone", vec![session(10 * n + 1, id)]);
        for k in 2..4 {
            let stale = update(
                10 * n + k,
                EntityType::FieldSession,
                id,
                1,
                json!({ "name": format!("name {k}") }),
            );
            send(&mut server, "ann", "phone", vec![stale]);
        }
    }
    let ann = user("ann");
    let all = server.conflicts(&ann, None);
    assert_eq!(all.len(), 3);
    // Resolve the second, then page the open ones one at a time.
    let request = ResolveRequest {
        resolution: Resolution::KeepServer,
        entity: None,
    };
    server
        .resolve_conflict(&ann, &all[1].conflict_id, &request, NOW)
        .unwrap();
    let open = Some(ConflictStatus::Open);
    let first = server.conflicts_page(&ann, open, 0, 1).unwrap();
    assert_eq!(first.conflicts[0].conflict_id, all[0].conflict_id);
    assert!(first.has_more);
    let second = server
        .conflicts_page(&ann, open, first.next_cursor, 1)
        .unwrap();
    assert_eq!(
        second.conflicts[0].conflict_id, all[2].conflict_id,
        "the resolved one is skipped"
    );
    let last = server
        .conflicts_page(&ann, open, second.next_cursor, 1)
        .unwrap();
    assert!(last.conflicts.is_empty() && !last.has_more);
    // Another user sees none of them, and a limit out of range is refused.
    assert!(
        server
            .conflicts_page(&user("bob"), None, 0, 10)
            .unwrap()
            .conflicts
            .is_empty()
    );
    assert!(
        server
            .conflicts_page(&ann, None, u64::MAX, 10)
            .unwrap()
            .conflicts
            .is_empty()
    );
    assert!(server.conflicts_page(&ann, None, 0, 0).is_err());
    assert!(
        server
            .conflicts_page(&ann, None, 0, PULL_LIMIT_MAX + 1)
            .is_err()
    );
}
